{{/*
The chart's name, overridable.
*/}}
{{- define "kvs-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The name of every object of a release: the release name when it already names the chart.
*/}}
{{- define "kvs-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Labels that select the operator's pods; never change them on upgrade (selectors are immutable).
*/}}
{{- define "kvs-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kvs-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels on every object of the release.
*/}}
{{- define "kvs-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "kvs-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
The operator's service account.
*/}}
{{- define "kvs-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kvs-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The operator's image: repository@digest when a digest is given, else repository:tag with the
tag defaulting to the chart's appVersion.
*/}}
{{- define "kvs-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The kvs-node image of KvsClusters that name none: repository@digest when a digest is given, else
repository:tag with the tag defaulting to the chart's appVersion, the operator's own default.
*/}}
{{- define "kvs-operator.nodeImage" -}}
{{- if .Values.nodeImage.digest }}
{{- printf "%s@%s" .Values.nodeImage.repository .Values.nodeImage.digest }}
{{- else }}
{{- printf "%s:%s" .Values.nodeImage.repository (default .Chart.AppVersion .Values.nodeImage.tag) }}
{{- end }}
{{- end }}

{{/*
The operator's leader-election Lease, in the release namespace.
*/}}
{{- define "kvs-operator.leaseName" -}}
{{- include "kvs-operator.fullname" . }}
{{- end }}

{{/*
The rules of everything the operator reads and writes for KvsClusters: the ClusterRole's, or the
watched namespace's Role's. Keep them to the calls the operator makes (operator/src: controller,
observe, act; events through kube's Recorder); the chart test compares them with that list.
An apply (server-side apply) that creates an object is authorized as `create` as well as `patch`.
*/}}
{{- define "kvs-operator.rules" -}}
- apiGroups: ["kvs.io"]
  resources: ["kvsclusters"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["kvs.io"]
  resources: ["kvsclusters/status"]
  verbs: ["patch"]
- apiGroups: ["kvs.io"]
  resources: ["kvsbackups"]
  verbs: ["list", "watch"]
- apiGroups: ["kvs.io"]
  resources: ["kvsbackups/status"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["pods", "persistentvolumeclaims"]
  verbs: ["list", "delete"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["create", "patch"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["create", "patch", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["create", "patch", "delete"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
