{{/*
Name prefix of every object: the release name, or fullnameOverride. Kept short because worker
Pod names append "-worker-<pool>-<n>" and the operator limits its prefix to 32 characters.
*/}}
{{- define "duplex.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 20 | trimSuffix "-" -}}
{{- end -}}

{{- define "duplex.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that select a component's pods; stable across upgrades. */}}
{{- define "duplex.selectorLabels" -}}
app.kubernetes.io/name: duplex
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "duplex.labels" -}}
{{ include "duplex.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ include "duplex.chart" .root }}
{{- end -}}

{{- define "duplex.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The image of GPU pools: the Dockerfile's gpu target, tagged "<tag>-gpu" unless gpuTag says. */}}
{{- define "duplex.gpuImage" -}}
{{- $tag := default (printf "%s-gpu" (default .Chart.AppVersion .Values.image.tag)) .Values.image.gpuTag -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}

{{- define "duplex.operatorName" -}}
{{- include "duplex.fullname" . }}-operator
{{- end -}}

{{- define "duplex.workerPrefix" -}}
{{- default (printf "%s-worker" (include "duplex.fullname" .)) .Values.operator.workerPrefix -}}
{{- end -}}

{{/*
The Redis every worker registers in and the orchestrator discovers workers from. The chart's own
asks for a password, which a URL names as $(REDIS_PASSWORD): the kubelet fills it in from the
variable of that name defined before it (duplex.redisEnv), so no spec holds the password itself.
*/}}
{{- define "duplex.redisUrl" -}}
{{- if .Values.redis.enabled -}}
redis://:$(REDIS_PASSWORD)@{{ include "duplex.fullname" . }}-redis:{{ .Values.redis.port }}/0
{{- else if not .Values.redis.existingSecret -}}
{{- $url := required "redis.url or redis.existingSecret is required when redis.enabled is false" .Values.redis.url -}}
{{- if regexMatch "^[a-z]+://[^/]*@" $url -}}
{{- fail "redis.url carries credentials, which would be written into Pod specs: put the URL in a Secret (redis.existingSecret, key url)" -}}
{{- end -}}
{{- $url -}}
{{- end -}}
{{- end -}}

{{- define "duplex.redisSecret" -}}
{{- default (printf "%s-redis" (include "duplex.fullname" .)) .Values.redis.existingSecret -}}
{{- end -}}

{{/*
Environment entries that give a container the Redis URL in the variable `.var`: with the
chart's Redis, its password from the Secret and then the URL naming it; with an external one,
the URL from its Secret (or as given, when it has no password).
*/}}
{{- define "duplex.redisEnv" -}}
{{- $root := .root -}}
{{- if $root.Values.redis.enabled }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "duplex.redisSecret" $root }}
      key: password
- name: {{ .var }}
  value: {{ include "duplex.redisUrl" $root | quote }}
{{- else if $root.Values.redis.existingSecret }}
- name: {{ .var }}
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.redis.existingSecret }}
      key: url
{{- else }}
- name: {{ .var }}
  value: {{ include "duplex.redisUrl" $root | quote }}
{{- end }}
{{- end -}}

{{- define "duplex.workerAdminSecret" -}}
{{- default (printf "%s-worker-admin" (include "duplex.fullname" .)) .Values.workerAdmin.existingSecret -}}
{{- end -}}

{{/* TLS between the orchestrator and the workers: the Secrets (kubernetes.io/tls, with ca.crt). */}}
{{- define "duplex.tlsCaSecret" -}}
{{- include "duplex.fullname" . }}-tls-ca
{{- end -}}

{{- define "duplex.workerTlsSecret" -}}
{{- include "duplex.fullname" . }}-worker-tls
{{- end -}}

{{- define "duplex.orchestratorTlsSecret" -}}
{{- include "duplex.fullname" . }}-orchestrator-tls
{{- end -}}

{{/* Where TLS Secrets are mounted, in worker and orchestrator Pods alike. */}}
{{- define "duplex.tlsMountPath" -}}
/etc/duplex-tls
{{- end -}}

{{/* "true" when cert-manager makes the certificates, "" when the chart's Job does. */}}
{{- define "duplex.certManager" -}}
{{- $source := .Values.tls.certificates -}}
{{- if or (eq $source "cert-manager") (and (eq $source "auto") (.Capabilities.APIVersions.Has "cert-manager.io/v1/Certificate")) -}}
true
{{- end -}}
{{- end -}}

{{/* The log format of every component, in its environment (nothing for the default, text). */}}
{{- define "duplex.logFormatEnv" -}}
{{- if eq .Values.logFormat "json" -}}
- name: DUPLEX_LOG_FORMAT
  value: json
{{- end -}}
{{- end -}}

{{- define "duplex.authSecret" -}}
{{- default (printf "%s-orchestrator-auth" (include "duplex.fullname" .)) .Values.orchestrator.auth.existingSecret -}}
{{- end -}}

{{- define "duplex.livekitSecret" -}}
{{- default (printf "%s-livekit" (include "duplex.fullname" .)) .Values.livekit.existingSecret -}}
{{- end -}}

{{/* Restricted pod security: every container here runs as the image's non-root user, on a
read-only root file system (anything written goes to an emptyDir). */}}
{{- define "duplex.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/*
The operator's pool list (OperatorConfig.pools, snake_case) from the workerPools map. Keys left
out of a pool's values are left out here too, so the operator's own defaults apply.
*/}}
{{- define "duplex.operatorPools" -}}
{{- $root := . -}}
{{- $keys := dict "gpu" "gpu" "minPods" "min_pods" "maxPods" "max_pods" "memoryMiB" "memory_mib" "gpuReserveMiB" "gpu_reserve_mib" "maxSessions" "max_sessions" "maxSessionsPerPod" "max_sessions_per_pod" "scaleDownSeconds" "scale_down_seconds" "port" "port" "metricsPort" "metrics_port" "healthPort" "health_port" "resources" "resources" "nodeSelector" "node_selector" "tolerations" "tolerations" "env" "env" "args" "args" -}}
{{- $pools := list -}}
{{- range $name, $values := .Values.workerPools -}}
{{- if and $values (ternary $values.enabled true (hasKey $values "enabled")) -}}
{{- if not (regexMatch "^[a-z0-9]([a-z0-9-]{0,18}[a-z0-9])?$" $name) -}}
{{- fail (printf "workerPools.%s: a pool name is 1-20 lowercase letters, digits or '-'" $name) -}}
{{- end -}}
{{- /* Checked here too, with the operator's defaults (0 and 1), so that a bad pool fails the install
rather than the operator's start. */ -}}
{{- $min := ternary $values.minPods 0 (hasKey $values "minPods") -}}
{{- $max := ternary $values.maxPods 1 (hasKey $values "maxPods") -}}
{{- if gt (int $min) (int $max) -}}
{{- fail (printf "workerPools.%s: minPods (%v) is more than maxPods (%v)" $name $min $max) -}}
{{- end -}}
{{- $pool := dict "name" $name -}}
{{- range $from, $to := $keys -}}
{{- if hasKey $values $from -}}
{{- $_ := set $pool $to (get $values $from) -}}
{{- end -}}
{{- end -}}
{{- if eq $root.Values.logFormat "json" -}}
{{- $_ := set $pool "env" (append (deepCopy ($values.env | default list)) (dict "name" "DUPLEX_LOG_FORMAT" "value" "json")) -}}
{{- end -}}
{{- $image := ternary (include "duplex.gpuImage" $root) (include "duplex.image" $root) (and (hasKey $values "gpu") (eq (toString $values.gpu) "true")) -}}
{{- $_ := set $pool "image" (default $image $values.image) -}}
{{- $_ := set $pool "image_pull_policy" (default $root.Values.image.pullPolicy $values.imagePullPolicy) -}}
{{- /* Without a name, each worker Pod gets an account of its own that may read that Pod alone. */ -}}
{{- if $values.serviceAccountName -}}
{{- $_ := set $pool "service_account_name" $values.serviceAccountName -}}
{{- end -}}
{{- with $root.Values.imagePullSecrets -}}
{{- $secrets := list -}}
{{- range . -}}
{{- $secrets = append $secrets .name -}}
{{- end -}}
{{- $_ := set $pool "image_pull_secrets" $secrets -}}
{{- end -}}
{{- $_ := set $pool "labels" (merge (dict "app.kubernetes.io/instance" $root.Release.Name) (deepCopy ($values.labels | default dict))) -}}
{{- $annotations := deepCopy ($values.annotations | default dict) -}}
{{- if not $root.Values.prometheus.annotations -}}
{{- /* The operator annotates worker pods for scraping unless the pool's annotations say otherwise. */ -}}
{{- $annotations = merge $annotations (dict "prometheus.io/scrape" "false") -}}
{{- end -}}
{{- $_ := set $pool "annotations" $annotations -}}
{{- $pools = append $pools $pool -}}
{{- end -}}
{{- end -}}
{{- toYaml $pools -}}
{{- end -}}

{{/*
Annotations from values, each value a string: `--set podAnnotations.revision=2` makes a number,
which the API server refuses in an annotation.
*/}}
{{- define "duplex.annotations" -}}
{{- range $key, $value := . }}
{{ $key | quote }}: {{ $value | toString | quote }}
{{- end }}
{{- end -}}
