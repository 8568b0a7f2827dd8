{{/*
A backend Deployment + Service (tiny, base-cpu, base-gpu): same shape, different settings.
Args (dict): root, component, image, port, replicas, env (list), values (the component's values),
transcriber (base-cpu/base-gpu: mounts the model store),
gpu (bool).
*/}}
{{- define "stt.backend" -}}
{{- $root := .root -}}
{{- $v := .values -}}
{{- $name := printf "%s-%s" (include "stt.fullname" $root) .component -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "stt.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  type: ClusterIP
  selector:
    {{- include "stt.selector" (dict "root" $root "component" .component) | nindent 4 }}
  ports:
    - {name: http, port: {{ .port }}, targetPort: http, protocol: TCP}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "stt.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  {{- if ne (toString .replicas) "" }}
  replicas: {{ .replicas }}
  {{- end }}
  revisionHistoryLimit: 3
  selector:
    matchLabels:
      {{- include "stt.selector" (dict "root" $root "component" .component) | nindent 6 }}
  strategy:
    type: RollingUpdate
    rollingUpdate: {maxSurge: {{ ternary 0 1 .gpu }}, maxUnavailable: {{ ternary 1 0 .gpu }}}
  template:
    metadata:
      labels:
        {{- include "stt.labels" $root | nindent 8 }}
        app.kubernetes.io/component: {{ .component }}
        stt.platform.io/backend: "true"
      annotations:
        {{- include "stt.podAnnotations" (dict "root" $root "port" .port) | nindent 8 }}
    spec:
      serviceAccountName: {{ include "stt.fullname" $root }}-backend
      automountServiceAccountToken: false
      enableServiceLinks: true
      securityContext:
        {{- include "stt.podSecurityContext" $root | nindent 8 }}
      {{- with $root.Values.image.pullSecrets }}
      imagePullSecrets: {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- if and .gpu $v.runtimeClassName }}
      runtimeClassName: {{ $v.runtimeClassName }}
      {{- end }}
      {{- with $v.nodeSelector }}
      nodeSelector: {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.tolerations }}
      tolerations: {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.affinity }}
      affinity: {{- toYaml . | nindent 8 }}
      {{- end }}
      terminationGracePeriodSeconds: {{ include "stt.gracePeriod" $root }}
      containers:
        - name: {{ .container }}
          image: {{ include "stt.image" (dict "root" $root "name" .image) }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          ports:
            - {name: http, containerPort: {{ .port }}, protocol: TCP}
          env:
            {{- toYaml .env | nindent 12 }}
            {{- include "stt.drainEnv" $root | nindent 12 }}
            {{- with $v.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- include "stt.probes" . | nindent 10 }}
          {{- include "stt.lifecycle" $root | nindent 10 }}
          resources:
            {{- $res := deepCopy $v.resources }}
            {{- if .gpu }}
            {{- $_ := set $res "limits" (merge (dict $v.gpuResource $v.gpusPerPod) ($res.limits | default dict)) }}
            {{- end }}
            {{- toYaml $res | nindent 12 }}
          securityContext:
            {{- include "stt.containerSecurityContext" $root | nindent 12 }}
          volumeMounts:
            - {name: tmp, mountPath: /tmp}
            {{- if and .transcriber $root.Values.modelStore.volume }}
            - {name: models, mountPath: /models, readOnly: true}
            {{- end }}
      volumes:
        - name: tmp
          emptyDir: {sizeLimit: 512Mi}
        {{- if .transcriber }}
        {{- with $root.Values.modelStore.volume }}
        {{- /* the model store (spec.models: /models/<directory>), read-only here */}}
        - name: models
          {{- toYaml . | nindent 10 }}
        {{- end }}
        {{- end }}
{{- end -}}
