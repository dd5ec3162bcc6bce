{{- define "keyward.labels" -}}
app.kubernetes.io/name: keyward
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}
{{- define "keyward.image" -}}{{ .Values.image.repository }}:{{ .Values.image.tag }}{{- end }}
{{- define "keyward.tlsSecret" -}}{{ if .Values.keyService.tls.generate }}{{ .Release.Name }}-key-service-tls{{ else }}{{ required "keyService.tls.secretName is required when keyService.tls.generate is false" .Values.keyService.tls.secretName }}{{ end }}{{- end }}
{{- define "keyward.securityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities: {drop: [ALL]}
seccompProfile: {type: RuntimeDefault}
{{- end }}
