{{/* Names ------------------------------------------------------------------------------------ */}}

{{- define "flowgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "flowgate.fullname" -}}
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

{{- define "flowgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "flowgate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "flowgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "flowgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "flowgate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "flowgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: flowgate
{{- end }}

{{- define "flowgate.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Ledger ----------------------------------------------------------------------------------- */}}

{{- define "flowgate.sqlite" -}}
{{- if eq .Values.ledger.type "sqlite" }}true{{ end }}
{{- end }}

{{- define "flowgate.pvcName" -}}
{{- default (printf "%s-ledger" (include "flowgate.fullname" .)) .Values.ledger.sqlite.persistence.existingClaim }}
{{- end }}

{{/* Where mounted Secrets appear in the container. */}}
{{- define "flowgate.secretsDir" -}}/etc/flowgate{{- end }}

{{/*
Checks across values that values.schema.json cannot express. Each refusal says what is wrong
and how to fix it; `helm install` stops with the message.
*/}}
{{- define "flowgate.validate" -}}
{{- $replicas := int .Values.replicas }}
{{- if and (include "flowgate.sqlite" .) (gt $replicas 1) }}
{{- fail (printf "\n\nflowgate: replicas: %d with the embedded SQLite ledger is refused.\nThe SQLite ledger is one file on one volume; several replicas cannot share it (charges would be lost or counted twice).\nEither keep replicas: 1, or run several replicas on PostgreSQL:\n  --set ledger.type=postgres --set ledger.postgres.existingSecret=<Secret with key 'url' = postgres://...>\n" $replicas) }}
{{- end }}
{{- if and (eq .Values.ledger.type "postgres") (not (or .Values.ledger.postgres.existingSecret .Values.ledger.postgres.url)) }}
{{- fail "\n\nflowgate: ledger.type=postgres needs the database URL: set ledger.postgres.existingSecret (a Secret whose key ledger.postgres.key holds postgres://user:password@host:5432/db) or ledger.postgres.url.\n" }}
{{- end }}
{{- if and .Values.ledger.postgres.existingSecret .Values.ledger.postgres.url }}
{{- fail "\n\nflowgate: set only one of ledger.postgres.existingSecret and ledger.postgres.url.\n" }}
{{- end }}
{{- if not (or .Values.controller.enabled .Values.proxy.enabled) }}
{{- fail "\n\nflowgate: controller.enabled and proxy.enabled are both false: nothing would run.\n" }}
{{- end }}
{{- $np := .Values.flowise.networkPolicy }}
{{- if and $np.namespace (not $np.podLabels) }}
{{- fail "\n\nflowgate: flowise.networkPolicy.namespace is set but flowise.networkPolicy.podLabels is empty: give the labels of Flowise's pods (e.g. app.kubernetes.io/name: flowise) so the NetworkPolicy selects them.\n" }}
{{- end }}
{{- if and $np.podLabels (not $np.namespace) }}
{{- fail "\n\nflowgate: flowise.networkPolicy.podLabels is set but flowise.networkPolicy.namespace is empty: give Flowise's namespace.\n" }}
{{- end }}
{{- if and .Values.podDisruptionBudget.enabled (kindIs "invalid" .Values.podDisruptionBudget.maxUnavailable) (kindIs "invalid" .Values.podDisruptionBudget.minAvailable) }}
{{- fail "\n\nflowgate: podDisruptionBudget.enabled needs maxUnavailable or minAvailable.\n" }}
{{- end }}
{{- end }}
