{{/*
Names. Every object is "<release>-<component>" so that other releases' objects (and the
Airflow subchart, which builds "<release>-api-server" and friends) can be found by name.
*/}}
{{- define "mlops.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mlops.fullname" -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- end }}

{{- define "mlops.component" -}}
{{- printf "%s-%s" (include "mlops.fullname" .root) .name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mlops.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels: call with (dict "root" $ "component" "model-server"). */}}
{{- define "mlops.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mlops.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "mlops.labels" -}}
helm.sh/chart: {{ include "mlops.chart" .root }}
{{ include "mlops.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: mlops
{{- end }}

{{/* Object names */}}
{{- define "mlops.mlflow.fullname" -}}{{ include "mlops.component" (dict "root" . "name" "mlflow") }}{{- end }}
{{- define "mlops.serving.fullname" -}}{{ include "mlops.component" (dict "root" . "name" "model-server") }}{{- end }}
{{- define "mlops.postgresql.fullname" -}}{{ include "mlops.component" (dict "root" . "name" "postgresql") }}{{- end }}
{{- define "mlops.sharedStore.claimName" -}}
{{- .Values.sharedStore.existingClaim | default (include "mlops.component" (dict "root" . "name" "shared-store")) }}
{{- end }}
{{- define "mlops.execution.configMapName" -}}{{ include "mlops.component" (dict "root" . "name" "execution") }}{{- end }}
{{- define "mlops.steps.namespace" -}}{{ .Values.steps.namespace | default .Release.Namespace }}{{- end }}
{{- define "mlops.steps.separate" -}}{{ if ne (include "mlops.steps.namespace" .) .Release.Namespace }}true{{ end }}{{- end }}
{{- define "mlops.steps.serviceAccountName" -}}{{ include "mlops.component" (dict "root" . "name" "steps") }}{{- end }}
{{- define "mlops.serving.serviceAccountName" -}}{{ include "mlops.component" (dict "root" . "name" "model-server") }}{{- end }}
{{/* The Airflow workers' ServiceAccount: rbac.workerServiceAccount.name, else the name the Airflow
subchart is told to use (airflow.workers.serviceAccount.name), else "<release>-airflow-worker". */}}
{{- define "mlops.airflowWorkerSAName" -}}
{{- if .Values.airflow.enabled }}{{ dig "workers" "serviceAccount" "name" "" .Values.airflow }}{{ end }}
{{- end }}
{{- define "mlops.worker.serviceAccountName" -}}
{{- .Values.rbac.workerServiceAccount.name | default (include "mlops.airflowWorkerSAName" .) | default (include "mlops.component" (dict "root" . "name" "airflow-worker")) }}
{{- end }}
{{- define "mlops.stores.secretName" -}}
{{- .Values.stores.existingSecret | default (include "mlops.component" (dict "root" . "name" "stores")) }}
{{- end }}
{{- define "mlops.mlflowAuth.secretName" -}}
{{- .Values.mlflow.auth.existingSecret | default (include "mlops.component" (dict "root" . "name" "mlflow-auth")) }}
{{- end }}
{{/* A process's MLflow user (role: pipeline or server), when MLflow's auth is on. */}}
{{- define "mlops.mlflowAuth.env" -}}
{{- if .root.Values.mlflow.auth.enabled }}
- name: MLFLOW_TRACKING_USERNAME
  value: {{ .role }}
- name: MLFLOW_TRACKING_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "mlops.mlflowAuth.secretName" .root }}
      key: {{ .role }}-password
{{- end }}
{{- end }}
{{- define "mlops.mlflow.backendSecretName" -}}
{{- .Values.mlflow.backendStore.existingSecret | default (include "mlops.component" (dict "root" . "name" "mlflow-backend")) }}
{{- end }}
{{- define "mlops.postgresql.secretName" -}}
{{- .Values.postgresql.auth.existingSecret | default (include "mlops.postgresql.fullname" .) }}
{{- end }}
{{- define "mlops.alertToken.secretName" -}}
{{- .Values.monitoring.alertToken.existingSecret | default (include "mlops.component" (dict "root" . "name" "alert-token")) }}
{{- end }}
{{- define "mlops.servingToken.secretName" -}}
{{- .Values.serving.auth.existingSecret | default (include "mlops.component" (dict "root" . "name" "serving-token")) }}
{{- end }}

{{/* Images: tag defaults to the chart's appVersion. */}}
{{- define "mlops.image" -}}
{{- printf "%s:%s" .image.repository (.image.tag | default .root.Chart.AppVersion | toString) }}
{{- end }}
{{- define "mlops.stepImage" -}}{{ include "mlops.image" (dict "root" . "image" .Values.images.step) }}{{- end }}
{{- define "mlops.servingImage" -}}{{ include "mlops.image" (dict "root" . "image" .Values.images.serving) }}{{- end }}

{{/* URLs and locations */}}
{{- define "mlops.mlflow.url" -}}
{{- printf "http://%s:%d" (include "mlops.mlflow.fullname" .) (int .Values.mlflow.port) }}
{{- end }}

{{- define "mlops.s3.bucket" -}}
{{- required "stores.s3.bucket is required when sharedStore.enabled is false: artifacts and MLflow runs need an S3 bucket (or turn on sharedStore, e.g. with values-embedded.yaml)" .Values.stores.s3.bucket }}
{{- end }}

{{/* MLOPS_ARTIFACT_ROOT: the shared volume in embedded mode, the S3 bucket otherwise. */}}
{{- define "mlops.artifactRoot" -}}
{{- if .Values.sharedStore.enabled }}
{{- printf "%s/artifacts" .Values.sharedStore.mountPath }}
{{- else }}
{{- printf "s3://%s/%s" (include "mlops.s3.bucket" .) .Values.stores.s3.artifactsPrefix }}
{{- end }}
{{- end }}

{{/* MLflow --artifacts-destination */}}
{{- define "mlops.mlflow.artifactsDestination" -}}
{{- if .Values.sharedStore.enabled }}
{{- printf "%s/mlflow" .Values.sharedStore.mountPath }}
{{- else }}
{{- printf "s3://%s/%s" (include "mlops.s3.bucket" .) .Values.stores.s3.mlflowPrefix }}
{{- end }}
{{- end }}

{{/* Does the stores Secret (S3 credentials/endpoint) exist? */}}
{{- define "mlops.stores.enabled" -}}
{{- if or .Values.stores.existingSecret (not .Values.sharedStore.enabled) }}true{{- end }}
{{- end }}

{{/* The shared-store volume and mount (as dicts, rendered with toYaml). */}}
{{- define "mlops.sharedStore.volume" -}}
name: shared-store
persistentVolumeClaim:
  claimName: {{ include "mlops.sharedStore.claimName" . }}
{{- end }}
{{- define "mlops.sharedStore.volumeMount" -}}
name: shared-store
mountPath: {{ .Values.sharedStore.mountPath }}
{{- end }}

{{/* Pod and container security contexts (values podSecurityContext / containerSecurityContext). */}}
{{- define "mlops.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext }}
{{- end }}
{{- define "mlops.containerSecurityContext" -}}
{{- toYaml .Values.containerSecurityContext }}
{{- end }}

{{- define "mlops.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
