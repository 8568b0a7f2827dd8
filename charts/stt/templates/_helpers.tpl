{{/* Names: <release>-stt, or <release> when the release name already contains "stt". */}}
{{- define "stt.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "stt.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: stt
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: stt-platform
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "proxy") */}}
{{- define "stt.selector" -}}
app.kubernetes.io/name: stt
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "stt.image" -}}
{{- printf "%s/stt-%s:%s" .root.Values.image.registry .name .root.Values.image.tag -}}
{{- end -}}

{{/* Service env-var prefix the kubelet derives from a Service name: stt-base-cpu -> STT_BASE_CPU */}}
{{- define "stt.svcEnv" -}}
{{- . | upper | replace "-" "_" -}}
{{- end -}}

{{/* URL of a component's Service as seen from a pod: (dict "root" $ "component" "base-cpu" "port" 5002) */}}
{{- define "stt.url" -}}
{{- $svc := printf "%s-%s" (include "stt.fullname" .root) .component -}}
{{- if eq .root.Values.serviceDiscovery "dns" -}}
http://{{ $svc }}.{{ .root.Release.Namespace }}.svc.{{ .root.Values.clusterDomain }}:{{ .port }}
{{- else -}}
http://$({{ include "stt.svcEnv" $svc }}_SERVICE_HOST):$({{ include "stt.svcEnv" $svc }}_SERVICE_PORT)
{{- end -}}
{{- end -}}

{{/* seccomp as a field from Kubernetes 1.19 (GA there), as the alpha annotation before. */}}
{{- define "stt.seccompField" -}}
{{- semverCompare ">=1.19-0" .Capabilities.KubeVersion.Version -}}
{{- end -}}

{{- define "stt.podAnnotations" -}}
{{- $root := .root -}}
{{- if $root.Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- if and $root.Values.podSecurity.seccompProfile (ne (include "stt.seccompField" $root) "true") }}
seccomp.security.alpha.kubernetes.io/pod: {{ ternary "runtime/default" "unconfined" (eq $root.Values.podSecurity.seccompProfile "RuntimeDefault") }}
{{- end }}
{{- end -}}

{{- define "stt.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurity.runAsUser }}
runAsGroup: {{ .Values.podSecurity.runAsGroup }}
fsGroup: {{ .Values.podSecurity.fsGroup }}
{{- if and .Values.podSecurity.seccompProfile (eq (include "stt.seccompField" .) "true") }}
seccompProfile:
  type: {{ .Values.podSecurity.seccompProfile }}
{{- end }}
{{- end -}}

{{- define "stt.containerSecurityContext" -}}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* The PDB API: policy/v1 where the cluster serves it (1.21+), policy/v1beta1 on 1.20. */}}
{{- define "stt.pdbApiVersion" -}}
{{- if and (.Capabilities.APIVersions.Has "policy/v1") (semverCompare ">=1.21-0" .Capabilities.KubeVersion.Version) -}}
policy/v1
{{- else -}}
policy/v1beta1
{{- end -}}
{{- end -}}

{{- define "stt.adminSecretName" -}}
{{- default (printf "%s-admin" (include "stt.fullname" .)) .Values.admin.existingSecret -}}
{{- end -}}

{{/* Probes on the services' own endpoints; the start-up probe covers model loading. */}}
{{- define "stt.probes" -}}
startupProbe:
  httpGet: {path: /healthz, port: http}
  periodSeconds: 2
  failureThreshold: 150
readinessProbe:
  httpGet: {path: /readyz, port: http}
  periodSeconds: 3
  failureThreshold: 2
livenessProbe:
  httpGet: {path: /healthz, port: http}
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 3
{{- end -}}

{{/* Graceful shutdown, for every service pod: on deletion the pod keeps serving for
preStopSeconds (endpoints and the proxy's health checks stop sending it work meanwhile), then
uvicorn stops accepting and finishes what it has for up to drainSeconds; the grace period
covers both, so the kubelet never kills a request that was still being answered. */}}
{{- define "stt.gracePeriod" -}}
{{- add .Values.shutdown.preStopSeconds .Values.shutdown.drainSeconds 5 -}}
{{- end -}}

{{- define "stt.lifecycle" -}}
lifecycle:
  preStop:
    exec: {command: ["sleep", {{ .Values.shutdown.preStopSeconds | quote }}]}
{{- end -}}

{{- define "stt.drainEnv" -}}
- {name: UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN, value: {{ .Values.shutdown.drainSeconds | quote }}}
{{- end -}}

{{/* The HPA API: autoscaling/v2 where the cluster serves it (1.23+), autoscaling/v2beta2 before. */}}
{{- define "stt.hpaApiVersion" -}}
{{- if and (.Capabilities.APIVersions.Has "autoscaling/v2") (semverCompare ">=1.23-0" .Capabilities.KubeVersion.Version) -}}
autoscaling/v2
{{- else -}}
autoscaling/v2beta2
{{- end -}}
{{- end -}}

{{/* The backends an HPA or KEDA scales (autoscaling.engine), for the operator to leave alone. */}}
{{- define "stt.externallyScaled" -}}
{{- $out := list -}}
{{- if ne .Values.autoscaling.engine "operator" -}}
{{- range $backend := list "gpu" "cpu" -}}
{{- if (index $.Values.sttConfig.autoscaling $backend).enabled }}{{ $out = append $out $backend }}{{ end -}}
{{- end -}}
{{- end -}}
{{- join "," $out -}}
{{- end -}}
