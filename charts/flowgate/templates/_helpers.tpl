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
{{- .Values.serviceAccount.name }}
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
{{- $pg := .Values.ledger.postgres }}
{{- if and (include "flowgate.sqlite" .) (or $pg.existingSecret $pg.url (include "flowgate.postgresTls" .)) }}
{{- fail "\n\nflowgate: ledger.postgres is set but ledger.type is sqlite (the default): the PostgreSQL settings would be ignored and budgets kept in SQLite.\nAdd --set ledger.type=postgres, or remove the ledger.postgres settings.\n" }}
{{- end }}
{{- with $pg.url }}
{{- if or (regexMatch "^[^:/?#]+://[^/?#@]*:[^/?#@]*@" .) (regexMatch "[?&]password=" .) }}
{{- fail "\n\nflowgate: ledger.postgres.url carries a password, which would be written into the Deployment (readable by anyone who may read Pods) and into Helm's release record.\nPut the URL in a Secret and set ledger.postgres.existingSecret instead.\n" }}
{{- end }}
{{- end }}
{{- $jwt := .Values.auth.jwt }}
{{- if and .Values.proxy.enabled (not (or $jwt.hs256Secret.existingSecret $jwt.publicKey.existingSecret $jwt.jwksUrl $jwt.oidcIssuerUrl .Values.auth.serviceAccountAudience)) }}
{{- fail "\n\nflowgate: the proxy needs a way to verify callers' tokens, and none is set (flowgate would exit at start).\nSet at least one of auth.jwt.hs256Secret.existingSecret, auth.jwt.publicKey.existingSecret, auth.jwt.jwksUrl, auth.jwt.oidcIssuerUrl or auth.serviceAccountAudience (docs/install.md, \"Callers (identity)\"), or proxy.enabled=false for a controller-only release.\n" }}
{{- end }}
{{- if and (not .Values.serviceAccount.create) (not .Values.serviceAccount.name) }}
{{- fail "\n\nflowgate: serviceAccount.create=false needs serviceAccount.name: without it flowgate's permissions (Secret reads included) would go to the namespace's \"default\" ServiceAccount and every pod using it.\n" }}
{{- end }}
{{- /* Durations flowgate would refuse at start (a crash loop; with SQLite's Recreate strategy, after the working pod is gone): checked here where written plainly (30s, 5m, 1h). */}}
{{- range (list (list "auth.jwt.leeway" (dig "auth" "jwt" "leeway" "" .Values.AsMap) 0 300 "at most 5m") (list "controller.syncInterval" (dig "controller" "syncInterval" "" .Values.AsMap) 5 86400 "from 5s to 24h") (list "proxy.upstreamTimeout" (dig "proxy" "upstreamTimeout" "" .Values.AsMap) 1 840 "above 0s and at most 14m")) }}
{{- $seconds := include "flowgate.seconds" (toString (index . 1)) }}
{{- if and $seconds (or (lt (int $seconds) (index . 2)) (gt (int $seconds) (index . 3))) }}
{{- fail (printf "\n\nflowgate: %s: %s is refused by flowgate (%s): the pod would not start.\n" (index . 0) (toString (index . 1)) (index . 4)) }}
{{- end }}
{{- end }}
{{- /* A level's other spellings, alone or in target=level, log nothing at all (flowgate refuses them at start). */}}
{{- range (splitList "," (toString .Values.logLevel)) }}
{{- $level := trim (last (splitList "=" .)) }}
{{- if has (lower $level) (list "warning" "information" "informational" "notice" "critical" "fatal" "err" "crit" "verbose" "inf" "dbg" "wrn" "none" "all") }}
{{- fail (printf "\n\nflowgate: logLevel: %q is not a level: use off, error, warn, info, debug or trace (or target=level, e.g. info,flowgate=debug).\n" $level) }}
{{- end }}
{{- end }}
{{- /* Retention flowgate refuses at start: months and years (no fixed length), or under 1h. */}}
{{- $retention := lower (trim (toString (dig "ledger" "retention" "" .Values.AsMap))) }}
{{- if regexMatch "^[0-9]+ *(mo|mos|month|months|y|yr|yrs|year|years)$" $retention }}
{{- fail (printf "\n\nflowgate: ledger.retention: %s is refused by flowgate: months and years have no fixed length; write days or weeks (180d, 26w).\n" $retention) }}
{{- end }}
{{- $retained := include "flowgate.seconds" $retention }}
{{- if and $retained (lt (int $retained) 3600) }}
{{- fail (printf "\n\nflowgate: ledger.retention: %s is refused by flowgate (at least 1h): the pod would not start.\n" $retention) }}
{{- end }}
{{- /* The TokenReview verdicts of ServiceAccount tokens live in the token cache. */}}
{{- if and (eq (int64 (dig "proxy" "tokenCacheSize" 10000 .Values.AsMap)) 0) .Values.auth.serviceAccountAudience }}
{{- fail "\n\nflowgate: proxy.tokenCacheSize: 0 with auth.serviceAccountAudience is refused by flowgate: ServiceAccount tokens' TokenReview verdicts are kept in the token cache (without it, one TokenReview per request). Leave the cache on.\n" }}
{{- end }}
{{- $grace := int .Values.terminationGracePeriodSeconds }}
{{- if lt $grace (add (int .Values.shutdownDelaySeconds) 55) }}
{{- fail (printf "\n\nflowgate: terminationGracePeriodSeconds: %d is shorter than flowgate's shutdown (shutdownDelaySeconds + 25 s of draining + up to 25 s of settling + about 5 s of cutting and stopping = %d s): settles, refunds and the Lease release would be cut off. Raise it to at least %d.\n" $grace (add (int .Values.shutdownDelaySeconds) 55) (add (int .Values.shutdownDelaySeconds) 55)) }}
{{- end }}
{{- $pdb := .Values.podDisruptionBudget }}
{{- if and $pdb.enabled (not (kindIs "invalid" $pdb.minAvailable)) (not (kindIs "string" $pdb.minAvailable)) (ge (int $pdb.minAvailable) $replicas) }}
{{- fail (printf "\n\nflowgate: podDisruptionBudget.minAvailable: %d with replicas: %d would block every node drain (no pod may ever be evicted). Use maxUnavailable, or fewer minAvailable than replicas.\n" (int $pdb.minAvailable) $replicas) }}
{{- end }}
{{- if $pdb.enabled }}
{{- $min := $pdb.minAvailable }}
{{- if kindIs "string" $min }}
{{- if hasSuffix "%" $min }}
{{- /* Kubernetes rounds a share of minAvailable up: 50% of one replica is that replica. */}}
{{- $need := div (add (mul (atoi (trimSuffix "%" $min)) $replicas) 99) 100 }}
{{- if ge (int $need) (int $replicas) }}
{{- fail (printf "\n\nflowgate: podDisruptionBudget.minAvailable: %q of replicas: %d keeps all %d pods and would block every node drain (no pod may ever be evicted). Use maxUnavailable, or a smaller share.\n" $min $replicas $need) }}
{{- end }}
{{- else if ge (atoi $min) (int $replicas) }}
{{- /* A count given as a string ("1", --set-string) renders as that count. */}}
{{- fail (printf "\n\nflowgate: podDisruptionBudget.minAvailable: %q with replicas: %d would block every node drain (no pod may ever be evicted). Use maxUnavailable, or fewer minAvailable than replicas.\n" $min $replicas) }}
{{- end }}
{{- end }}
{{- $max := $pdb.maxUnavailable }}
{{- if and (kindIs "invalid" $min) (not (kindIs "invalid" $max)) }}
{{- if or (and (kindIs "string" $max) (eq (atoi (trimSuffix "%" (toString $max))) 0)) (and (not (kindIs "string" $max)) (eq (int $max) 0)) }}
{{- fail (printf "\n\nflowgate: podDisruptionBudget.maxUnavailable: %v would block every node drain (no pod may ever be evicted). Use 1 or more.\n" $max) }}
{{- end }}
{{- end }}
{{- end }}
{{- $clientId := dig "auth" "tokenClient" "id" "" .Values.AsMap }}
{{- if and $clientId (not .Values.auth.tokenEndpointUrl) }}
{{- fail "\n\nflowgate: auth.tokenClient.id is set but auth.tokenEndpointUrl is empty: give the token endpoint the client is for.\n" }}
{{- end }}
{{- if and (dig "auth" "tokenClient" "secret" "existingSecret" "" .Values.AsMap) (not $clientId) }}
{{- fail "\n\nflowgate: auth.tokenClient.secret.existingSecret is set but auth.tokenClient.id is empty: give the client whose secret it is.\n" }}
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
{{- if and .Values.ingress.enabled (not .Values.ingress.hosts) }}
{{- fail "\n\nflowgate: ingress.enabled needs at least one entry in ingress.hosts, e.g. {host: chat-api.example.com, paths: [{path: /, pathType: Prefix}]}.\n" }}
{{- end }}
{{- if and .Values.ingress.enabled (not .Values.proxy.enabled) }}
{{- fail "\n\nflowgate: ingress.enabled with proxy.enabled=false: the Ingress would route to a port nothing answers. Enable the proxy, or disable the ingress.\n" }}
{{- end }}
{{- if and .Values.podDisruptionBudget.enabled (kindIs "invalid" .Values.podDisruptionBudget.maxUnavailable) (kindIs "invalid" .Values.podDisruptionBudget.minAvailable) }}
{{- fail "\n\nflowgate: podDisruptionBudget.enabled needs maxUnavailable or minAvailable.\n" }}
{{- end }}
{{- end }}

{{/* A duration written as whole seconds, minutes or hours (30s, 5m, 1h), in seconds; empty for any other form (left to flowgate to check). */}}
{{- define "flowgate.seconds" -}}
{{- if regexMatch "^[0-9]+s$" . }}{{ trimSuffix "s" . | int }}
{{- else if regexMatch "^[0-9]+m$" . }}{{ mul (trimSuffix "m" . | int) 60 }}
{{- else if regexMatch "^[0-9]+h$" . }}{{ mul (trimSuffix "h" . | int) 3600 }}
{{- end }}
{{- end }}

{{/* ledger.postgres.tls.existingSecret, or empty; read with dig, so that values kept from a release older than the key (--reuse-values) still render. */}}
{{- define "flowgate.postgresTls" -}}
{{- dig "ledger" "postgres" "tls" "existingSecret" "" .Values.AsMap }}
{{- end }}
