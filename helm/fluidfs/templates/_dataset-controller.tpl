{{/* fluidfs-controller (the Dataset controller): names shared by its templates. */}}

{{- define "fluidfs.datasetControllerName" -}}
{{- printf "%s-dataset-controller" (include "fluidfs.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "fluidfs.datasetControllerServiceAccountName" -}}
{{- if .Values.datasetController.serviceAccount.create -}}
{{- default (include "fluidfs.datasetControllerName" .) .Values.datasetController.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.datasetController.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The rules fluidfs-controller needs where Datasets live (see helm/fluidfs/README.md). */}}
{{- define "fluidfs.datasetControllerRules" -}}
- apiGroups: ["fluidfs.io"]
  resources: ["datasets"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["fluidfs.io"]
  resources: ["datasets/status"]
  verbs: ["get", "patch"]
- apiGroups: ["fluidfs.io"]
  resources: ["datasets/finalizers"]
  verbs: ["update"]
- apiGroups: [""]
  resources: ["configmaps", "services", "serviceaccounts"]
  verbs: ["get", "create", "update", "delete"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "create", "update", "delete"]
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "create", "update", "delete"]
- apiGroups: ["apps"]
  resources: ["statefulsets/scale"]
  verbs: ["get", "patch"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
# the workers' Role holds get/list/watch (discovery); create/update/delete: the slice of the
# node members of each Dataset's cluster (<dataset>-cache-nodes)
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["get", "list", "watch", "create", "update", "delete"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create"]
{{- end -}}

{{- define "fluidfs.datasetWebhookName" -}}
{{- printf "%s-webhook" (include "fluidfs.datasetControllerName" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Any cache-aware scheduling feature on (they share the caches, hence the read permissions). */}}
{{- define "fluidfs.datasetScheduling" -}}
{{- $dc := .Values.datasetController -}}
{{- if and $dc.enabled (or $dc.webhook.enabled $dc.nodeLabels.enabled $dc.queue.enabled $dc.kueue.enabled) -}}true{{- end -}}
{{- end -}}

{{/* Cluster-wide rules of cache-aware scheduling (see helm/fluidfs/README.md). */}}
{{- define "fluidfs.datasetSchedulingRules" -}}
{{- $dc := .Values.datasetController -}}
- apiGroups: [""]
  resources: ["persistentvolumeclaims", "persistentvolumes"]
  verbs: ["get", "list"]
- apiGroups: ["storage.k8s.io"]
  resources: ["storageclasses"]
  verbs: ["get", "list"]
- apiGroups: [""]
  resources: ["nodes"]
  verbs: {{ if $dc.nodeLabels.enabled }}["list", "patch"]{{ else }}["list"]{{ end }}
{{- if or $dc.nodeLabels.enabled $dc.queue.enabled $dc.kueue.enabled }}
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
{{- end }}
{{- if $dc.queue.enabled }}
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: {{ if gt (int $dc.queue.warmAhead) 0 }}["list", "patch", "create"]{{ else }}["list", "patch"]{{ end }}
{{- end }}
{{- if $dc.kueue.enabled }}
# the Kueue AdmissionCheck: Workloads' check entries (status) and pass-over annotations; our
# AdmissionChecks' Active condition
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads"]
  verbs: ["list", "patch"]
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads/status", "admissionchecks/status"]
  verbs: ["patch"]
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["admissionchecks"]
  verbs: ["list"]
{{- end }}
{{- if or $dc.queue.enabled $dc.kueue.enabled }}
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create"]
{{- end }}
{{- end -}}
