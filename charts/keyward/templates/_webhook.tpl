{{/* The admission webhook's name: its Service, ValidatingWebhookConfiguration, Secret prefix. */}}
{{- define "keyward.webhook.name" -}}{{ include "keyward.fullname" . }}-webhook{{- end -}}

{{/* keyward.webhook.args: the controller's webhook flags, a YAML list (empty when disabled). */}}
{{- define "keyward.webhook.args" -}}
{{- if .Values.webhook.enabled -}}
{{- $name := include "keyward.webhook.name" . -}}
- --webhook-port={{ .Values.webhook.port }}
- --webhook-namespace={{ .Release.Namespace }}
- --webhook-service-name={{ $name }}
- --webhook-config-name={{ $name }}
- --webhook-secret-name={{ $name }}-cert
{{- if .Values.webhook.certManager.enabled }}
- --webhook-cert-manager=true
{{- end }}
{{- else -}}
[]
{{- end -}}
{{- end -}}

{{/* keyward.webhook.ports: the controller's webhook container port, a YAML list. */}}
{{- define "keyward.webhook.ports" -}}
{{- if .Values.webhook.enabled -}}
- {name: webhook, containerPort: {{ .Values.webhook.port }}}
{{- else -}}
[]
{{- end -}}
{{- end -}}
