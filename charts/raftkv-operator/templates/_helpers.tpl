{{/* Chart name, truncated to the 63 characters of a label value. */}}
{{- define "raftkv-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the release's objects: the release name when it already
contains the chart name, else <release>-<chart>. */}}
{{- define "raftkv-operator.fullname" -}}
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

{{- define "raftkv-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object of the release. */}}
{{- define "raftkv-operator.labels" -}}
helm.sh/chart: {{ include "raftkv-operator.chart" . }}
{{ include "raftkv-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: raftkv
{{- end }}

{{/* The operator pods' selector (never changes across upgrades). */}}
{{- define "raftkv-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "raftkv-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "raftkv-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "raftkv-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "raftkv-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "raftkv-operator.leaseName" -}}
{{- default (include "raftkv-operator.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/* The one watched namespace, or empty for all (the operator's --namespace). */}}
{{- define "raftkv-operator.watchNamespace" -}}
{{- if gt (len .Values.watchNamespaces) 1 }}
{{- fail "watchNamespaces: the operator watches all namespaces or exactly one; install one release per namespace" }}
{{- end }}
{{- first .Values.watchNamespaces | default "" }}
{{- end }}

{{/* Whether the Prometheus Operator objects are rendered. */}}
{{- define "raftkv-operator.monitoring" -}}
{{- if and .Values.monitoring.enabled (or .Values.monitoring.force (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1")) }}true{{ end }}
{{- end }}

{{/* The KVCluster the helm test uses: name and namespace, or empty. */}}
{{- define "raftkv-operator.testCluster" -}}
{{- if .Values.tests.kvcluster }}{{ .Values.tests.kvcluster }}
{{- else if .Values.kvcluster.enabled }}{{ .Values.kvcluster.name }}
{{- end }}
{{- end }}

{{- define "raftkv-operator.testNamespace" -}}
{{- if .Values.tests.namespace }}{{ .Values.tests.namespace }}
{{- else if and .Values.kvcluster.enabled .Values.kvcluster.namespace (not .Values.tests.kvcluster) }}{{ .Values.kvcluster.namespace }}
{{- else }}{{ .Release.Namespace }}
{{- end }}
{{- end }}

{{/* What the operator does where it manages KVClusters: the permissions of
examples/operator.yaml, cluster-wide when it watches every namespace, in the
one watched namespace otherwise. */}}
{{- define "raftkv-operator.rules" -}}
- apiGroups: ["raftkv.io"]
  resources: ["kvclusters"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["raftkv.io"]
  resources: ["kvclusters/status"]
  verbs: ["get", "patch"]
# Server-side apply of the owned objects (apply creates an object that is missing).
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch"]
# Pods are read, and deleted one at a time to restart them on a new version (OnDelete).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "delete"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
