{{/*
Every value a template writes is quoted (`quote`, or `toYaml`/`toJson` for structures), never
written bare: YAML would re-type `null`, `true`, `on`, `1.0` or `010`, and a newline would start
new fields. tests/deploy/test_helm.py renders hostile values with and without the schema.
*/}}
{{/* Labels every object carries (the kustomize base's two, plus Helm's own). */}}
{{- define "aapl.labels" -}}
app.kubernetes.io/name: apparmor-profile-loader
app.kubernetes.io/part-of: apparmor-profile-loader
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service | quote }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | quote }}
{{- end -}}

{{/* The one image of every container: by digest when given. */}}
{{- define "aapl.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}
{{- end -}}

{{/* The profiles ConfigMap: the chart's own, or the operator's. Fails without profiles. */}}
{{- define "aapl.profilesConfigMap" -}}
{{- if and .Values.profiles.existingConfigMap .Values.profiles.files -}}
{{- fail "set either profiles.files or profiles.existingConfigMap, not both" -}}
{{- else if .Values.profiles.existingConfigMap -}}
{{ .Values.profiles.existingConfigMap }}
{{- else if .Values.profiles.files -}}
apparmor-profiles
{{- else -}}
{{- fail "no profiles: set profiles.files (helm install --set-file profiles.files.<name>=<file>) or profiles.existingConfigMap (a ConfigMap made with kubectl create configmap --from-file=<dir>/)" -}}
{{- end -}}
{{- end -}}

{{/* untaint's --taints: KEY[=VALUE]:EFFECT,... */}}
{{- define "aapl.taints" -}}
{{- $out := list -}}
{{- range .Values.gateTaints -}}
{{- if .value -}}
{{- $out = append $out (printf "%s=%s:%s" .key .value .effect) -}}
{{- else -}}
{{- $out = append $out (printf "%s:%s" .key .effect) -}}
{{- end -}}
{{- end -}}
{{- join "," $out -}}
{{- end -}}

{{/* The gate keys, each once, in order, one per line. */}}
{{- define "aapl.gateKeyLines" -}}
{{- $keys := list -}}
{{- range .Values.gateTaints -}}
{{- $keys = append $keys (required "every gateTaints entry needs a key" .key) -}}
{{- end -}}
{{- $keys | uniq | join "\n" -}}
{{- end -}}

{{/* The gate keys as a CEL list of strings (a key holds no quote: values.schema.json). */}}
{{- define "aapl.gateKeysCel" -}}
{{- $quoted := list -}}
{{- range (include "aapl.gateKeyLines" . | splitList "\n") -}}
{{- $quoted = append $quoted (printf "'%s'" .) -}}
{{- end -}}
[{{ join ", " $quoted }}]
{{- end -}}
