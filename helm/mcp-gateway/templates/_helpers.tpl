{{/* Names and labels, as `helm create` makes them. */}}
{{- define "mcp-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mcp-gateway.fullname" -}}
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

{{- define "mcp-gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mcp-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mcp-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mcp-gateway.labels" -}}
helm.sh/chart: {{ include "mcp-gateway.chart" . }}
{{ include "mcp-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mcp-security-gateway
{{- end }}

{{- define "mcp-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mcp-gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "mcp-gateway.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* More than one pod can run: replicas, or an autoscaler. */}}
{{- define "mcp-gateway.multiReplica" -}}
{{- if or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled }}true{{ end }}
{{- end }}

{{/*
The gateway's settings file: the user's `config`, then what the chart decides (ports, paths
of what it mounts), which wins.
*/}}
{{- define "mcp-gateway.config" -}}
{{- $chart := dict
  "host" "0.0.0.0"
  "http_port" 8080
  "grpc_port" 8081
  "state_dir" "/var/lib/mcp-gateway"
  "policy_dir" "/etc/mcp-gateway/policies" -}}
{{- $audit := dict "path" "/var/log/mcp-gateway/audit.jsonl" "stdout" .Values.audit.stdout -}}
{{- if .Values.audit.signingKeySecret }}
{{- $_ := set $audit "signing_key" "/etc/mcp-gateway/audit-key/audit-signing.key" }}
{{- end }}
{{- $_ := set $chart "audit" $audit }}
{{- $tls := dict "terminated_upstream" .Values.tls.terminatedUpstream }}
{{- if .Values.tls.secretName }}
{{- $_ := set $tls "cert_file" "/etc/mcp-gateway/tls/tls.crt" }}
{{- $_ := set $tls "key_file" "/etc/mcp-gateway/tls/tls.key" }}
{{- if .Values.tls.clientCertificates }}
{{- $_ := set $tls "client_ca_file" "/etc/mcp-gateway/tls/ca.crt" }}
{{- end }}
{{- end }}
{{- $_ := set $chart "tls" $tls }}
{{- if .Values.auth.jwt.enabled }}
{{- $jwt := dict "issuer" .Values.auth.jwt.issuer "audience" .Values.auth.jwt.audience }}
{{- if .Values.auth.jwt.jwksSecret }}
{{- $_ := set $jwt "jwks_file" "/etc/mcp-gateway/jwks/jwks.json" }}
{{- else }}
{{- $_ := set $jwt "jwks_url" .Values.auth.jwt.jwksUrl }}
{{- end }}
{{- $_ := set $chart "auth" (dict "jwt" $jwt) }}
{{- end }}
{{- if .Values.opa.enabled }}
{{- $_ := set $chart "policy" (dict "engine" "opa" "opa_url" "http://127.0.0.1:8181") }}
{{- end }}
{{- if .Values.workspaces.existingClaim }}
{{- $_ := set $chart "sandbox" (dict "workspace_root" "/srv/workspaces") }}
{{- end }}
{{- toYaml (mustMergeOverwrite (deepCopy .Values.config) $chart) }}
{{- end }}

{{/* Every container: no capability, no privilege escalation, a read-only root. */}}
{{- define "mcp-gateway.strictContainer" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end }}
