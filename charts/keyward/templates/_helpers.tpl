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

{{/* keyward.selectorLabels: arguments root context and role name. */}}
{{- define "keyward.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: keyward
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "keyward.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* keyward.rbac renders the permissions of one role: a ClusterRole and ClusterRoleBinding,
or, when watchNamespaces lists namespaces, a Role and RoleBinding in each of them.
Arguments: root context, object name, component, service account name, rules. */}}
{{- define "keyward.rbac" -}}
{{- $root := index . 0 -}}
{{- $name := index . 1 -}}
{{- $component := index . 2 -}}
{{- $sa := index . 3 -}}
{{- $rules := index . 4 -}}
{{- $namespaces := $root.Values.watchNamespaces | default (list "") -}}
{{- range $ns := $namespaces }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: {{ if $ns }}Role{{ else }}ClusterRole{{ end }}
metadata:
  name: {{ $name }}
  {{- if $ns }}
  namespace: {{ $ns }}
  {{- end }}
  labels:
    {{- include "keyward.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ $component }}
rules:
  {{- toYaml $rules | nindent 2 }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: {{ if $ns }}RoleBinding{{ else }}ClusterRoleBinding{{ end }}
metadata:
  name: {{ $name }}
  {{- if $ns }}
  namespace: {{ $ns }}
  {{- end }}
  labels:
    {{- include "keyward.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ $component }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: {{ if $ns }}Role{{ else }}ClusterRole{{ end }}
  name: {{ $name }}
subjects:
- kind: ServiceAccount
  name: {{ $sa }}
  namespace: {{ $root.Release.Namespace }}
{{- end }}
{{- end -}}

{{/* keyward.component renders the ServiceAccount, RBAC, Deployment and PodDisruptionBudget of
one role. Arguments: root context, role name, values of the role, extra args, extra ports,
TLS mounts (a list of dicts with name, secretName, path). */}}
{{- define "keyward.component" -}}
{{- $root := index . 0 -}}
{{- $role := index . 1 -}}
{{- $values := index . 2 -}}
{{- $args := index . 3 -}}
{{- $ports := index . 4 -}}
{{- $mounts := index . 5 -}}
{{- $name := printf "%s-%s" (include "keyward.fullname" $root) $role -}}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "keyward.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ $role }}
{{- $rbac := $root.Files.Get (printf "files/%s_role.yaml" $role) | fromYaml }}
{{- include "keyward.rbac" (list $root $name $role $name $rbac.rules) }}
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
  {{- if not (and $values.autoscaling $values.autoscaling.enabled) }}
  replicas: {{ $values.replicas }}
  {{- end }}
  revisionHistoryLimit: 3
  selector:
    matchLabels:
      {{- include "keyward.selectorLabels" (list $root $role) | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "keyward.labels" $root | nindent 8 }}
        app.kubernetes.io/component: {{ $role }}
        {{- with $root.Values.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $root.Values.podAnnotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      serviceAccountName: {{ $name }}
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $root.Values.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      # On SIGTERM keyward turns unready, keeps serving for --shutdown-delay while endpoints
      # drop the pod, then drains in-flight requests (up to 10s); the grace period covers both.
      terminationGracePeriodSeconds: {{ $root.Values.terminationGracePeriodSeconds }}
      containers:
      - name: keyward
        image: {{ include "keyward.image" $root }}
        imagePullPolicy: {{ $root.Values.image.pullPolicy }}
        args:
        - {{ $role }}
        - --zap-log-level={{ $root.Values.logLevel }}
        - --metrics-bind-address=:9090
        - --health-probe-bind-address=:9091
        - --public-url={{ $root.Values.publicURL }}
        - --shutdown-delay={{ $root.Values.shutdownDelay }}
        {{- with $root.Values.watchNamespaces }}
        - --watch-namespaces={{ join "," . }}
        {{- end }}
        {{- range $args }}
        - {{ . }}
        {{- end }}
        {{- range $values.extraArgs }}
        - {{ . }}
        {{- end }}
        env:
        - name: POD_NAMESPACE
          valueFrom:
            fieldRef:
              fieldPath: metadata.namespace
        ports:
        - {name: metrics, containerPort: 9090, protocol: TCP}
        - {name: probes, containerPort: 9091, protocol: TCP}
        {{- range $ports }}
        - {{ toJson . }}
        {{- end }}
        # /readyz passes once the informer caches have synced (and fails while shutting
        # down); /healthz only says the process serves.
        startupProbe:
          httpGet: {path: /healthz, port: probes}
          periodSeconds: 2
          failureThreshold: 30
        livenessProbe:
          httpGet: {path: /healthz, port: probes}
          periodSeconds: 10
          failureThreshold: 3
        readinessProbe:
          httpGet: {path: /readyz, port: probes}
          periodSeconds: 2
          failureThreshold: 1
        resources:
          {{- toYaml $values.resources | nindent 10 }}
        securityContext:
          {{- toYaml $root.Values.securityContext | nindent 10 }}
        {{- if $mounts }}
        volumeMounts:
        {{- range $mounts }}
        - {name: {{ .name }}, mountPath: {{ .path }}, readOnly: true}
        {{- end }}
        {{- end }}
      {{- if $mounts }}
      volumes:
      {{- range $mounts }}
      - name: {{ .name }}
        secret:
          secretName: {{ .secretName }}
      {{- end }}
      {{- end }}
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
      {{- with $root.Values.topologySpreadConstraints }}
      topologySpreadConstraints:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- if $values.podDisruptionBudget.enabled }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "keyward.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ $role }}
spec:
  maxUnavailable: {{ $values.podDisruptionBudget.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "keyward.selectorLabels" (list $root $role) | nindent 6 }}
{{- end }}
{{- if and $values.autoscaling $values.autoscaling.enabled }}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "keyward.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ $role }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ $name }}
  minReplicas: {{ $values.autoscaling.minReplicas }}
  maxReplicas: {{ $values.autoscaling.maxReplicas }}
  metrics:
  - type: Resource
    resource:
      name: cpu
      target:
        type: Utilization
        averageUtilization: {{ $values.autoscaling.targetCPUUtilizationPercentage }}
{{- end }}
{{- end -}}
