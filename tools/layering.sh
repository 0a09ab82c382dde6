#!/usr/bin/env bash
# tools/layering.sh [ROOT] — fails on any #include that points up or sideways
# in the layers (docs/ARCHITECTURE.md, "The shape"):
#
#   core/include/bidistream/*.h   public: only <libc> and "bidistream/..." headers
#   core/                         the public headers and core's own; no nghttp2,
#                                 protobuf-c or liburing
#   proto/                        its own headers, the generated *.pb-c.h, the
#                                 public headers and core's base (base.h,
#                                 list.h: what bds_base_internal provides);
#                                 never io/, never liburing
#   io/                           anything below it, never tools/; of services/
#                                 only services/services.h, the one entry
#                                 bds_server_create calls to register the built-ins
#   tools/ (but bds.c)            bidistreamd and example_server: the public
#                                 headers and their own only (the API's first users)
#   tools/bds.c                   the client: public headers, proto/ and core's base
#   services/, examples/          (when present) the public headers, the
#                                 generated messages and their own only
#
# A quoted include is looked up where the build finds it (the including file's
# folder first, then each layer's folder); one found nowhere is an error too,
# since its layer cannot be told. Prints each violation as FILE:LINE: why, and
# a count; exit 0 when there is none, 1 otherwise. The test command runs it
# (tools/test.sh), and so does ctest (tools.layering, tools.layering_catches).
set -uo pipefail
root=${1:-$(cd "$(dirname "$0")/.." && pwd)}
cd "$root" || exit 2

violations=0
violation() { # file line why
  echo "$1:$2: $3"
  violations=$((violations + 1))
}

# The layer a quoted include of FILE resolves to: core-public, core-base,
# core, proto, proto-gen, io, tools, or "" when found nowhere.
resolve() { # including-file include
  local from=$1 inc=$2 dir
  dir=$(dirname "$from")
  if [[ $inc == bidistream/* ]]; then
    [ -f "core/include/$inc" ] && echo core-public && return
  fi
  if [[ $inc == *.pb-c.h ]]; then
    echo proto-gen && return # generated into the build tree from proto/*.proto and grpc-proto
  fi
  local d path
  for d in "$dir" core proto io tools services; do # an application's includes resolve in "$dir"
    if [ -f "$d/$inc" ]; then
      path=$(realpath -m --relative-to=. "$d/$inc") # "../" cannot hide where it points
      case $path in
        core/include/*) echo core-public ;;
        core/base.h | core/list.h) echo core-base ;;
        core/*) echo core ;;
        proto/*) echo proto ;;
        io/*) echo io ;;
        tools/*) echo tools ;;
        services/services.h) [[ $from == services/* ]] && echo app || echo app-entry ;;
        services/* | examples/*) echo app ;;
        *) echo "" ;;
      esac
      return
    fi
  done
  echo ""
}

# check LAYER-NAME ALLOWED-LAYERS FORBIDDEN-SYSTEM-REGEX FILES...
check() {
  local name=$1 allowed=$2 forbidden_sys=$3
  shift 3
  local f line lineno inc where
  for f in "$@"; do
    [ -f "$f" ] || continue
    while IFS= read -r line; do
      lineno=${line%%:*}
      line=${line#*:}
      if [[ $line =~ ^[[:space:]]*#[[:space:]]*include[[:space:]]*\<([^>]+)\> ]]; then
        inc=${BASH_REMATCH[1]}
        if [ -n "$forbidden_sys" ] && [[ $inc =~ $forbidden_sys ]]; then
          violation "$f" "$lineno" "$name includes <$inc>"
        fi
      elif [[ $line =~ ^[[:space:]]*#[[:space:]]*include[[:space:]]*\"([^\"]+)\" ]]; then
        inc=${BASH_REMATCH[1]}
        where=$(resolve "$f" "$inc")
        if [ -z "$where" ]; then
          violation "$f" "$lineno" "$name includes \"$inc\", found in no layer"
        elif [[ " $allowed " != *" $where "* ]]; then
          violation "$f" "$lineno" "$name includes \"$inc\" from $where (allowed: $allowed)"
        fi
      fi
    done < <(grep -n -E '^[[:space:]]*#[[:space:]]*include' "$f")
  done
}

shopt -s nullglob
public_headers=(core/include/bidistream/*.h)
core_files=()
for f in core/*.c core/*.h; do core_files+=("$f"); done
proto_files=(proto/*.c proto/*.h)
io_files=(io/*.c io/*.h)
tool_files=()
for f in tools/*.c tools/*.h; do [ "$f" = tools/bds.c ] || tool_files+=("$f"); done
app_files=()
for f in services/*.c services/*.h examples/*.c examples/*.h examples/*/*.c examples/*/*.h; do app_files+=("$f"); done

check "a public header" "core-public" '^(liburing|nghttp2|protobuf-c)' "${public_headers[@]}"
check "core/" "core-public core-base core" '^(liburing|nghttp2|protobuf-c)' "${core_files[@]}"
check "proto/" "core-public core-base proto proto-gen" '^liburing' "${proto_files[@]}"
check "io/" "core-public core-base core proto proto-gen io app-entry" '' "${io_files[@]}"
check "tools/" "core-public tools" '^(liburing|nghttp2|protobuf-c)' "${tool_files[@]}"
check "tools/bds.c" "core-public core-base proto proto-gen tools" '^liburing' tools/bds.c
check "an application (services/, examples/)" "core-public proto-gen app" '^(liburing|nghttp2)' "${app_files[@]}"

if [ "$violations" -gt 0 ]; then
  echo "layering: $violations violation(s)"
  exit 1
fi
echo "layering: ok (${#public_headers[@]} public headers, ${#core_files[@]} core, ${#proto_files[@]} proto," \
  "${#io_files[@]} io, $((${#tool_files[@]} + 1)) tools, ${#app_files[@]} application files)"
