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
