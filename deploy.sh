#!/usr/bin/env bash
# Build the RunPod worker image (linux/amd64), tag it with the git revision, push it, and point the endpoint at it.
#
#   HPO_REGISTRY=docker.io/alice ./deploy.sh             build, push, update the endpoint (if key + endpoint given)
#   HPO_REGISTRY=docker.io/alice ./deploy.sh --dry-run   print what it would do, change nothing
#
# Environment (also read from ./.env, only RUNPOD_* and HPO_* names; the real environment wins):
#   HPO_REGISTRY        registry and namespace to push to (required), e.g. docker.io/alice or ghcr.io/org
#   HPO_IMAGE_NAME      image name (default: hpo-worker)
#   RUNPOD_API_KEY      with RUNPOD_ENDPOINT_ID: update the endpoint's template to the new image (RunPod REST API);
#   RUNPOD_ENDPOINT_ID  the key is sent in a header read from stdin, never on a command line, never printed
#   RUNPOD_REST_URL     default https://rest.runpod.io/v1
#   HPO_USER_CODE       a folder of your own model code (model=package.module:function), put on the workers'
#                       PYTHONPATH: e.g. HPO_USER_CODE=./src for src/mypkg/nets.py and model=mypkg.nets:build
set -euo pipefail

usage() {
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
}

DRY_RUN=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY_RUN=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "error: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")"

# .env: KEY=VALUE lines for RUNPOD_* / HPO_* only, without executing the file; the environment takes precedence.
if [[ -f .env ]]; then
    while IFS='=' read -r key value || [[ -n "$key" ]]; do
        key="${key#export }"
        key="${key//[[:space:]]/}"
        [[ "$key" =~ ^(RUNPOD|HPO)_[A-Z0-9_]+$ ]] || continue
        value="${value%$'\r'}"
        value="${value#\"}"; value="${value%\"}"
        value="${value#\'}"; value="${value%\'}"
        if [[ -z "${!key:-}" ]]; then
            printf -v "$key" '%s' "$value"
            export "${key?}"
        fi
    done < .env
fi

if [[ -z "${HPO_REGISTRY:-}" ]]; then
    echo "error: set HPO_REGISTRY to the registry/namespace to push to, e.g. HPO_REGISTRY=docker.io/alice" >&2
    exit 2
fi

revision="$(git rev-parse --short=12 HEAD)"
if [[ -n "$(git status --porcelain --untracked-files=no)" ]]; then
    revision="${revision}-dirty"
fi
image="${HPO_REGISTRY%/}/${HPO_IMAGE_NAME:-hpo-worker}:${revision}"
rest="${RUNPOD_REST_URL:-https://rest.runpod.io/v1}"

run() {
    if [[ "$DRY_RUN" == 1 ]]; then
        printf '+'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

build_args=(--platform linux/amd64 --tag "$image" --push)
if [[ -n "${HPO_USER_CODE:-}" ]]; then
    if [[ ! -d "$HPO_USER_CODE" ]]; then
        echo "error: HPO_USER_CODE=$HPO_USER_CODE is not a folder; give the folder that holds your model's package" >&2
        exit 2
    fi
    build_args+=(--build-context "usercode=$(cd "$HPO_USER_CODE" && pwd)")
fi

echo "image: $image"
run docker buildx build "${build_args[@]}" .

if [[ -z "${RUNPOD_API_KEY:-}" || -z "${RUNPOD_ENDPOINT_ID:-}" ]]; then
    echo "RUNPOD_API_KEY and RUNPOD_ENDPOINT_ID not both set: the endpoint was not updated; point its template at $image"
    exit 0
fi

# The endpoint's image lives in its template: look the template up, then set its imageName (a rolling release).
runpod_api() {  # method path [json-body]; the Authorization header comes from stdin, so `ps` never shows the key
    local method="$1" path="$2" body="${3:-}"
    local args=(--silent --show-error --fail-with-body --request "$method" --header @- "${rest}${path}")
    if [[ -n "$body" ]]; then
        args+=(--header "Content-Type: application/json" --data "$body")
    fi
    if [[ "$DRY_RUN" == 1 ]]; then
        printf '+ curl --request %s --header "Authorization: Bearer ***" %q%s\n' "$method" "${rest}${path}" \
            "${body:+ --data $body}"
        return 0
    fi
    printf 'Authorization: Bearer %s\n' "$RUNPOD_API_KEY" | curl "${args[@]}"
}

if [[ "$DRY_RUN" == 1 ]]; then
    runpod_api GET "/endpoints/${RUNPOD_ENDPOINT_ID}"
    runpod_api PATCH "/templates/<templateId of endpoint ${RUNPOD_ENDPOINT_ID}>" "{\"imageName\": \"${image}\"}"
    exit 0
fi

endpoint_json="$(runpod_api GET "/endpoints/${RUNPOD_ENDPOINT_ID}")"
template_id="$(printf '%s' "$endpoint_json" | python3 -c 'import json, sys; print(json.load(sys.stdin)["templateId"])')"
runpod_api PATCH "/templates/${template_id}" "{\"imageName\": \"${image}\"}" > /dev/null
echo "endpoint ${RUNPOD_ENDPOINT_ID}: template ${template_id} now uses ${image}"
