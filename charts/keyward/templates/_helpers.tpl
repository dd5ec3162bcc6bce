{{/* The chart's name (app.kubernetes.io/name); nameOverride replaces it. */}}
{{- define "keyward.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end }}

{{/*
Prefix of every object name: the release name (as before nameOverride/fullnameOverride existed,
so upgrades keep their names), or fullnameOverride. Cut to 40 characters so the longest suffix
("-object-version-key", "-controller-metrics") still fits the 63 of a label value and a
Service name.
*/}}
{{- define "keyward.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- end }}

{{/* Common labels on every object. */}}
{{- define "keyward.labels" -}}
app.kubernetes.io/name: {{ include "keyward.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "keyward.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end }}

{{/* Names shared by several templates. */}}
{{- define "keyward.controllerName" -}}{{ include "keyward.fullname" . }}-controller{{- end }}
{{- define "keyward.providerName" -}}{{ include "keyward.fullname" . }}-csi-provider{{- end }}
{{- define "keyward.keyServiceName" -}}{{ include "keyward.fullname" . }}-key-service{{- end }}
{{- define "keyward.versionKeySecret" -}}{{ include "keyward.fullname" . }}-object-version-key{{- end }}

{{/*
Service account names. With create=false the chart binds its RBAC to an account you manage,
which must then be named (the key service authenticates the provider by this exact name).
*/}}
{{- define "keyward.controllerServiceAccount" -}}
{{- if .Values.controller.serviceAccount.create -}}
{{ default (include "keyward.controllerName" .) .Values.controller.serviceAccount.name }}
{{- else -}}
{{ required "controller.serviceAccount.name is required when controller.serviceAccount.create is false" .Values.controller.serviceAccount.name }}
{{- end -}}
{{- end }}
{{- define "keyward.providerServiceAccount" -}}
{{- if .Values.provider.serviceAccount.create -}}
{{ default (include "keyward.providerName" .) .Values.provider.serviceAccount.name }}
{{- else -}}
{{ required "provider.serviceAccount.name is required when provider.serviceAccount.create is false" .Values.provider.serviceAccount.name }}
{{- end -}}
{{- end }}
{{- define "keyward.keyServiceHost" -}}{{ include "keyward.keyServiceName" . }}.{{ .Release.Namespace }}.svc{{- end }}

{{/* The Secret with tls.crt, tls.key and ca.crt that the key service presents. */}}
{{- define "keyward.tlsSecret" -}}
{{- if .Values.keyService.tls.generate -}}
{{ include "keyward.fullname" . }}-key-service-tls
{{- else -}}
{{ required "keyService.tls.secretName is required when keyService.tls.generate is false" .Values.keyService.tls.secretName }}
{{- end -}}
{{- end }}

{{/*
The generated TLS data (base64 values), computed once per render and memoised in a private
key of .Values, so the Secret and the pods' checksum annotations see the same certificate.
On upgrade the certificate already in the cluster is reused (lookup) unless
keyService.tls.regenerate is set; `helm template` and dry runs cannot look it up and show a
fresh one.
*/}}
{{- define "keyward.tlsData" -}}
{{- if not (hasKey .Values "__keywardTLS") -}}
{{- $name := include "keyward.tlsSecret" . -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace $name -}}
{{- $data := dict -}}
{{- if and $existing $existing.data (hasKey $existing.data "ca.crt") (not .Values.keyService.tls.regenerate) -}}
{{- $_ := set $data "tls.crt" (index $existing.data "tls.crt") -}}
{{- $_ := set $data "tls.key" (index $existing.data "tls.key") -}}
{{- $_ := set $data "ca.crt" (index $existing.data "ca.crt") -}}
{{- else -}}
{{- $host := include "keyward.keyServiceHost" . -}}
{{- $days := int .Values.keyService.tls.validityDays -}}
{{- $ca := genCA (printf "%s-key-service-ca" (include "keyward.fullname" .)) $days -}}
{{- $sans := list $host (include "keyward.keyServiceName" .) (printf "%s.%s" (include "keyward.keyServiceName" .) .Release.Namespace) (printf "%s.cluster.local" $host) -}}
{{- $cert := genSignedCert $host nil $sans $days $ca -}}
{{- $_ := set $data "tls.crt" ($cert.Cert | b64enc) -}}
{{- $_ := set $data "tls.key" ($cert.Key | b64enc) -}}
{{- $_ := set $data "ca.crt" ($ca.Cert | b64enc) -}}
{{- end -}}
{{- $_ := set .Values "__keywardTLS" $data -}}
{{- end -}}
{{- toYaml (get .Values "__keywardTLS") -}}
{{- end }}

{{/* Pod annotation that rolls the pods when the generated certificate changes. */}}
{{- define "keyward.tlsChecksum" -}}
{{- if .Values.keyService.tls.generate -}}
checksum/key-service-tls: {{ include "keyward.tlsData" . | sha256sum }}
{{- end -}}
{{- end }}

{{/* Container hardening shared by both workloads (the provider overrides the user). */}}
{{- define "keyward.securityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities: {drop: [ALL]}
seccompProfile: {type: RuntimeDefault}
{{- end }}
