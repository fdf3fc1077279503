{{/* Common names and labels. */}}
{{- define "keyward.name" -}}keyward{{- end -}}

{{- define "keyward.fullname" -}}
{{- if contains "keyward" .Release.Name -}}{{ .Release.Name | trunc 40 | trimSuffix "-" }}{{- else -}}{{ printf "%s-keyward" .Release.Name | trunc 40 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "keyward.labels" -}}
app.kubernetes.io/name: keyward
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "keyward.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* keyward.component renders the ServiceAccount, ClusterRole, ClusterRoleBinding and Deployment
of one role. Arguments: root context, role name, values of the role, extra args. */}}
{{- define "keyward.component" -}}
{{- $root := index . 0 -}}
{{- $role := index . 1 -}}
{{- $values := index . 2 -}}
{{- $args := index . 3 -}}
{{- $ports := index . 4 -}}
{{- $name := printf "%s-%s" (include "keyward.fullname" $root) $role -}}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "keyward.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ $role }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: {{ $name }}
  labels:
    {{- include "keyward.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ $role }}
{{- $rbac := $root.Files.Get (printf "files/%s_role.yaml" $role) | fromYaml }}
rules:
  {{- toYaml $rbac.rules | nindent 2 }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: {{ $name }}
  labels:
    {{- include "keyward.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ $role }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: {{ $name }}
subjects:
- kind: ServiceAccount
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "keyward.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ $role }}
spec:
  replicas: {{ $values.replicas }}
  selector:
    matchLabels:
      app.kubernetes.io/name: keyward
      app.kubernetes.io/instance: {{ $root.Release.Name }}
      app.kubernetes.io/component: {{ $role }}
  template:
    metadata:
      labels:
        {{- include "keyward.labels" $root | nindent 8 }}
        app.kubernetes.io/component: {{ $role }}
    spec:
      serviceAccountName: {{ $name }}
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      containers:
      - name: keyward
        image: {{ include "keyward.image" $root }}
        imagePullPolicy: {{ $root.Values.image.pullPolicy }}
        args:
        - {{ $role }}
        - --zap-log-level={{ $root.Values.logLevel }}
        - --metrics-bind-address=:9090
        - --public-url={{ $root.Values.publicURL }}
        - --health-probe-bind-address=:9091
        {{- range $args }}
        - {{ . }}
        {{- end }}
        env:
        - name: POD_NAMESPACE
          valueFrom:
            fieldRef:
              fieldPath: metadata.namespace
        ports:
        - {name: metrics, containerPort: 9090}
        - {name: probes, containerPort: 9091}
        {{- range $ports }}
        - {{ toJson . }}
        {{- end }}
        livenessProbe:
          httpGet: {path: /healthz, port: probes}
        readinessProbe:
          httpGet: {path: /readyz, port: probes}
        resources:
          {{- toYaml $values.resources | nindent 10 }}
        securityContext:
          {{- toYaml $root.Values.securityContext | nindent 10 }}
      {{- with $root.Values.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $root.Values.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $root.Values.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end -}}
