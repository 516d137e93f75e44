{{/* vim: set filetype=mustache: */}}

{{/* Chart name, overridable. */}}
{{- define "fluidfs.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: release-chart unless the release name already contains the chart name. */}}
{{- define "fluidfs.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "fluidfs.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels every object carries. */}}
{{- define "fluidfs.labels" -}}
helm.sh/chart: {{ include "fluidfs.chart" . }}
{{ include "fluidfs.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: fluidfs
{{- end -}}

{{- define "fluidfs.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fluidfs.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Per-component labels: pass (dict "ctx" $ "component" "node"). */}}
{{- define "fluidfs.componentLabels" -}}
{{ include "fluidfs.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "fluidfs.componentSelectorLabels" -}}
{{ include "fluidfs.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "fluidfs.nodeServiceAccountName" -}}
{{- if .Values.node.serviceAccount.create -}}
{{- default (printf "%s-node" (include "fluidfs.fullname" .)) .Values.node.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.node.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "fluidfs.controllerServiceAccountName" -}}
{{- if .Values.controller.serviceAccount.create -}}
{{- default (printf "%s-controller" (include "fluidfs.fullname" .)) .Values.controller.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.controller.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The fluidfs image; the tag defaults to the chart appVersion. */}}
{{- define "fluidfs.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* A sidecar image from {repository, tag}. */}}
{{- define "fluidfs.sidecarImage" -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}

{{/* Metrics are served when asked for directly or through a ServiceMonitor. */}}
{{- define "fluidfs.metricsEnabled" -}}
{{- if or .Values.metrics.enabled .Values.metrics.serviceMonitor.enabled -}}true{{- end -}}
{{- end -}}

{{/* The mount supervisors serve metrics for Prometheus, or for fluidfs-controller (the autoscaler's
  input signals and the node cache labels come from them). */}}
{{- define "fluidfs.mounterMetrics" -}}
{{- if or (include "fluidfs.metricsEnabled" .) .Values.datasetController.enabled -}}true{{- end -}}
{{- end -}}

{{/* Kubelet directory without a trailing slash. */}}
{{- define "fluidfs.kubeletDir" -}}
{{- trimSuffix "/" .Values.kubeletDir -}}
{{- end -}}

{{/* Directory holding the plugin socket on the host. */}}
{{- define "fluidfs.pluginDir" -}}
{{- printf "%s/plugins/%s" (include "fluidfs.kubeletDir" .) .Values.driverName -}}
{{- end -}}

{{/* Environment of the plugin in both modes. Cache tiers and TTLs are not node-wide settings:
     each volume carries them in its parameters (see storageclass.yaml). */}}
{{- define "fluidfs.pluginEnv" -}}
- name: NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- end -}}
