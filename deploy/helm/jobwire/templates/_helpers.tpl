{{- define "jobwire.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "jobwire.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "jobwire.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "jobwire.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "jobwire.selectorLabels" -}}
app.kubernetes.io/name: {{ include "jobwire.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "jobwire.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "jobwire.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "jobwire.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "jobwire.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "jobwire.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The Secret and key of the API token: the one given, or the one the chart makes. */}}
{{- define "jobwire.tokenSecret" -}}
{{- if .Values.auth.existingSecret -}}
{{- .Values.auth.existingSecret -}}
{{- else if .Values.auth.token -}}
{{- include "jobwire.fullname" . -}}
{{- else -}}
{{- fail "jobwire listens on 0.0.0.0 in the pod and needs an API token: set auth.existingSecret (a Secret with the key auth.secretKey) or auth.token" -}}
{{- end -}}
{{- end -}}

{{- define "jobwire.dataClaim" -}}
{{- $p := ternary .Values.store.sqlite.persistence .Values.store.postgres.persistence (eq .Values.store.type "sqlite") -}}
{{- default (printf "%s-data" (include "jobwire.fullname" .)) $p.existingClaim -}}
{{- end -}}

{{- define "jobwire.persistence" -}}
{{- $p := ternary .Values.store.sqlite.persistence .Values.store.postgres.persistence (eq .Values.store.type "sqlite") -}}
{{- toYaml $p -}}
{{- end -}}

{{- define "jobwire.checkStore" -}}
{{- if not (has .Values.store.type (list "sqlite" "postgres")) -}}
{{- fail (printf "store.type must be sqlite or postgres, not %q" .Values.store.type) -}}
{{- end -}}
{{- if and (eq .Values.store.type "postgres") (not .Values.store.postgres.existingSecret) -}}
{{- fail "store.type postgres needs store.postgres.existingSecret: a Secret with the database URL under store.postgres.secretKey" -}}
{{- end -}}
{{- end -}}

{{/* The namespaces the kubernetes target's Jobs run in: the default one and the extra ones. */}}
{{- define "jobwire.jobNamespaces" -}}
{{- $default := default .Release.Namespace .Values.kubernetes.jobNamespace -}}
{{- toJson (uniq (prepend .Values.rbac.extraNamespaces $default)) -}}
{{- end -}}
