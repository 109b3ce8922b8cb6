{{/*
Names. Every object is named after the release: the edge's Envoy configuration reaches the
services at `<release>-<service>`, exactly as `qrmesh envoy-config --kubernetes --release
<release>` renders it, so there is no nameOverride. Helm limits release names to 53
characters, which keeps `<release>-redirect` within the 63 of a Service name.
*/}}
{{- define "qrmesh.name" -}}
{{- printf "%s-%s" .root.Release.Name .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release name the chart's files/envoy.yaml was generated with (by `make helm`). */}}
{{- define "qrmesh.envoyReleaseTemplate" -}}qrmesh{{- end -}}

{{/* Labels every object carries; `component` names the part (identity, edge, migrate...). */}}
{{- define "qrmesh.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: qrmesh
{{ include "qrmesh.selectorLabels" . }}
{{- end -}}

{{/* Labels that select one component's pods. */}}
{{- define "qrmesh.selectorLabels" -}}
app.kubernetes.io/name: qrmesh
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The label NetworkPolicies select tiers by: service, edge, migrate or telemetry. */}}
{{- define "qrmesh.tierLabel" -}}
qrmesh.dev/tier: {{ .tier }}
{{- end -}}

{{/* A selector for every pod of one tier of this release. */}}
{{- define "qrmesh.tierSelector" -}}
matchLabels:
  app.kubernetes.io/name: qrmesh
  app.kubernetes.io/instance: {{ .root.Release.Name }}
  qrmesh.dev/tier: {{ .tier }}
{{- end -}}

{{/* An image reference from {repository, tag, digest}; the tag defaults to appVersion. */}}
{{- define "qrmesh.image" -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository (.image.tag | default .root.Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{- define "qrmesh.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default .Release.Name -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{/* The Secret the services read: the user's existing one or the chart's. */}}
{{- define "qrmesh.secretName" -}}
{{- .Values.secrets.existingSecret | default (include "qrmesh.name" (dict "root" . "component" "secrets")) -}}
{{- end -}}

{{/* Fail early, with the value to set, when no Secret can provide a required setting. */}}
{{- define "qrmesh.requireSecrets" -}}
{{- if not .Values.secrets.existingSecret -}}
{{- $_ := required "secrets.databaseUrl is required (or set secrets.existingSecret)" .Values.secrets.databaseUrl -}}
{{- $_ := required "secrets.redisUrl is required (or set secrets.existingSecret)" .Values.secrets.redisUrl -}}
{{- $_ := required "secrets.serviceSecret is required (or set secrets.existingSecret)" .Values.secrets.serviceSecret -}}
{{- end -}}
{{- end -}}

{{/* host:port of a service inside the cluster. */}}
{{- define "qrmesh.serviceAddress" -}}
{{- $service := index .root.Values.services .service -}}
{{- printf "%s:%d" (include "qrmesh.name" (dict "root" .root "component" .service)) (int $service.grpcPort) -}}
{{- end -}}

{{/* The OTLP endpoint the services export traces to, or nothing. */}}
{{- define "qrmesh.otlpEndpoint" -}}
{{- if .Values.otel.collector.enabled -}}
{{- printf "http://%s:4317" (include "qrmesh.name" (dict "root" . "component" "otelcol")) -}}
{{- else -}}
{{- .Values.otel.endpoint -}}
{{- end -}}
{{- end -}}

{{/*
The edge's Envoy configuration: files/envoy.yaml, which is `qrmesh envoy-config --kubernetes
--release qrmesh` verbatim, with the release's Service names and the values that only
change single lines (trusted proxies, CORS origins). tests/e2e/test_helm.py checks the result
against the command's output for other releases and settings, so a change of the template
that these substitutions no longer match fails the tests.
*/}}
{{- define "qrmesh.envoyConfig" -}}
{{- $config := .Files.Get "files/envoy.yaml" -}}
{{- if not $config -}}
{{- fail "files/envoy.yaml is missing: run `make helm` to generate it" -}}
{{- end -}}
{{- $from := printf "{address: \"%s-" (include "qrmesh.envoyReleaseTemplate" .) -}}
{{- $config = replace $from (printf "{address: \"%s-" .Release.Name) $config -}}
{{- $hops := int .Values.edge.trustedHops -}}
{{- if $hops -}}
{{- $config = replace "xff_num_trusted_hops: 0\n" (printf "xff_num_trusted_hops: %d\n" $hops) $config -}}
{{- end -}}
{{- if .Values.edge.corsOrigins -}}
{{- $block := regexFind "allow_origin_string_match:\n( *- safe_regex: \\{regex: '[^'\n]*'\\}\n)+" $config -}}
{{- if not $block -}}
{{- fail "files/envoy.yaml has no CORS origin list the chart can replace" -}}
{{- end -}}
{{- $indent := regexFind "\n *- " $block | trimPrefix "\n" | trimSuffix "- " -}}
{{- $lines := list "allow_origin_string_match:" -}}
{{- range .Values.edge.corsOrigins -}}
{{- /* The same escaping as Python's re.escape, which `qrmesh.edge.cors_origins` uses. */ -}}
{{- $escaped := regexQuoteMeta (trimSuffix "/" .) | replace "-" "\\-" | replace "&" "\\&" | replace "~" "\\~" | replace "#" "\\#" -}}
{{- $lines = append $lines (printf "%s- safe_regex: {regex: '^%s$'}" $indent $escaped) -}}
{{- end -}}
{{- $config = replace $block (printf "%s\n" (join "\n" $lines)) $config -}}
{{- end -}}
{{- $config -}}
{{- end -}}

{{/* The soft spread over nodes every component gets when spreadAcrossNodes is on, plus its own. */}}
{{- define "qrmesh.topologySpread" -}}
{{- $constraints := .own | default (list) -}}
{{- if .root.Values.spreadAcrossNodes -}}
{{- $selector := dict "matchLabels" (include "qrmesh.selectorLabels" . | fromYaml) -}}
{{- $constraints = prepend $constraints (dict "maxSkew" 1 "topologyKey" "kubernetes.io/hostname" "whenUnsatisfiable" "ScheduleAnyway" "labelSelector" $selector) -}}
{{- end -}}
{{- if $constraints }}
topologySpreadConstraints:
  {{- toYaml $constraints | nindent 2 }}
{{- end -}}
{{- end -}}

{{/* Scheduling fields of a pod spec from a component's values. */}}
{{- define "qrmesh.scheduling" -}}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- include "qrmesh.topologySpread" (dict "root" .root "component" .component "own" .values.topologySpreadConstraints) }}
{{- end -}}

{{/* The /tmp emptyDir every pod mounts (the root filesystem is read-only). */}}
{{- define "qrmesh.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end -}}

{{/* A HorizontalPodAutoscaler for a workload, from {enabled, minReplicas, maxReplicas, target...}. */}}
{{- define "qrmesh.hpa" -}}
{{- if .autoscaling.enabled }}
{{- if gt (int .autoscaling.minReplicas) (int .autoscaling.maxReplicas) }}
{{- fail (printf "%s: autoscaling.minReplicas (%d) is above maxReplicas (%d)" .component (int .autoscaling.minReplicas) (int .autoscaling.maxReplicas)) }}
{{- end }}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "qrmesh.name" . }}
  labels:
    {{- include "qrmesh.labels" . | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: {{ .kind }}
    name: {{ include "qrmesh.name" . }}
  minReplicas: {{ .autoscaling.minReplicas }}
  maxReplicas: {{ .autoscaling.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ .autoscaling.targetCPUUtilizationPercentage }}
{{- end }}
{{- end -}}

{{/* A PodDisruptionBudget for a component, from {enabled, maxUnavailable}. */}}
{{- define "qrmesh.pdb" -}}
{{- if .budget.enabled }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "qrmesh.name" . }}
  labels:
    {{- include "qrmesh.labels" . | nindent 4 }}
spec:
  maxUnavailable: {{ .budget.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "qrmesh.selectorLabels" . | nindent 6 }}
{{- end }}
{{- end -}}
