#!/usr/bin/env bash
# Builds the NoKV Docker images from this checkout's own binaries, with no
# registry access:
#
#   nokv:dev          the `nokv` binary (serve, cluster init, every client verb, mount)
#                     and fusermount3 (for `nokv mount`)
#   nokv-s3s-fs:dev   the s3s-fs S3 server (~/.cargo/bin/s3s-fs), bucket `nokv` pre-created
#   nokv-etcd:dev     etcd, the control plane (the host's etcd: Debian's etcd-server)
#
# Usage:  bash docker/build.sh
#
# Each image is FROM scratch (by default) holding the binary, exactly the shared
# libraries `ldd` lists for it plus the dynamic loader (at their host paths), a
# minimal /etc (passwd, group, nsswitch.conf), CA certificates if the host has
# them, /tmp and /data. The docker build context is a staging directory under
# target/docker/<image>/ that holds only those files:
#   bin/NAME    the binary
#   runtime/    loader, shared libraries, /etc basics: only used on scratch
#   files/      CA certificates, /tmp, /data: used on every base
#
# Environment:
#   BASE=debian:bookworm-slim   base image instead of scratch (must be pullable or present);
#                               the host's libraries and /etc files are then NOT copied
#                               (RUNTIME=base): the base image's own libc is used
#   NOKV_IMAGE, NOKV_S3_IMAGE, NOKV_ETCD_IMAGE   image tags (default nokv:dev,
#                               nokv-s3s-fs:dev, nokv-etcd:dev), the same variables
#                               docker-compose.yml reads
#   NOKV_BIN=PATH               use this nokv binary instead of `cargo build --release`
#   NOKV_FEATURES=clock-skew    cargo features of that release build; `clock-skew` is for
#                               test images only (the partition tests' clock-skew fault:
#                               an offset on each replica's clock, read from a file);
#                               never for images users run
#   S3S_FS_BIN=PATH             use this s3s-fs binary instead of ~/.cargo/bin/s3s-fs
#   NOKV_STRIP=0                keep the release profile's debug line tables in the image
#                               (default 1: `strip --strip-debug`, symbols stay, so panic
#                               backtraces keep function names; nokv 153 MB -> 32 MB)
#   ETCD_BIN=PATH               use this etcd binary instead of the one on PATH
#   ONLY=nokv|s3s-fs|etcd       build one image only
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

base="${BASE:-scratch}"
nokv_tag="${NOKV_IMAGE:-nokv:dev}"
s3_tag="${NOKV_S3_IMAGE:-nokv-s3s-fs:dev}"
etcd_tag="${NOKV_ETCD_IMAGE:-nokv-etcd:dev}"
only="${ONLY:-}"
stage_root="$root/target/docker"
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"

log() { printf 'build.sh: %s\n' "$*" >&2; }

command -v docker >/dev/null || { log "docker is not installed"; exit 1; }

# The host's libraries are only copied into a scratch image; a real base image
# brings its own libc and /etc (and copying over its merged-/usr /lib symlink
# would break it).
if [[ "$base" == "scratch" ]]; then runtime="host"; else runtime="base"; fi

# stage BINARY NAME DIR: fills DIR with bin/NAME, runtime/ (loader + needed shared
# libraries at their host paths, /etc basics) and files/ (certificates, /tmp, /data).
stage() {
  local bin="$1" name="$2" dir="$3"
  rm -rf "$dir"
  mkdir -p "$dir/bin" "$dir/runtime/etc" "$dir/files/tmp" "$dir/files/data"
  chmod 1777 "$dir/files/tmp"
  cp -L "$bin" "$dir/bin/$name"
  if [[ "${NOKV_STRIP:-1}" == "1" ]]; then
    strip --strip-debug "$dir/bin/$name"
  fi
  # ldd lines: "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and the
  # loader "/lib64/ld-linux-x86-64.so.2 (0x...)"; linux-vdso has no file.
  local deps
  if deps="$(ldd "$bin" 2>/dev/null)"; then
    local path
    while read -r path; do
      [[ -n "$path" && -e "$path" ]] || continue
      cp -L --parents "$path" "$dir/runtime/"
    done < <(printf '%s\n' "$deps" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u)
  else
    log "$name is statically linked: no shared libraries to copy"
  fi
  if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
    mkdir -p "$dir/files/etc/ssl/certs"
    cp -L /etc/ssl/certs/ca-certificates.crt "$dir/files/etc/ssl/certs/"
  else
    log "no /etc/ssl/certs/ca-certificates.crt on this host: the image has no CA certificates (S3 over TLS will fail)"
  fi
  # Name resolution: /etc/hosts and /etc/resolv.conf are provided by Docker.
  printf 'hosts: files dns\n' > "$dir/runtime/etc/nsswitch.conf"
  printf 'root:x:0:0:root:/root:/nonexistent\nnobody:x:65534:65534:nobody:/nonexistent:/nonexistent\n' > "$dir/runtime/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' > "$dir/runtime/etc/group"
}

# image DOCKERFILE DIR TAG
image() {
  local dockerfile="$1" dir="$2" tag="$3"
  log "docker build $tag (base $base) from $(du -sh "$dir" | cut -f1) of staged files"
  docker build -q -f "$dockerfile" \
    --build-arg "BASE=$base" --build-arg "RUNTIME=$runtime" \
    -t "$tag" "$dir" >/dev/null
  # Drop the images this tag replaced (only ours: dangling and labelled).
  docker image prune -f --filter label=io.nokv.image >/dev/null
  log "built $tag: $(docker image inspect -f '{{.Size}}' "$tag" | awk '{ printf "%.1f MB", $1 / 1e6 }')"
}

if [[ -z "$only" || "$only" == "nokv" ]]; then
  nokv_bin="${NOKV_BIN:-}"
  if [[ -z "$nokv_bin" ]]; then
    features=()
    [[ -z "${NOKV_FEATURES:-}" ]] || features=(--features "$NOKV_FEATURES")
    log "cargo build --release -p nokv-cli --bin nokv ${features[*]} (no-op when up to date)"
    cargo build --release -p nokv-cli --bin nokv ${features[@]+"${features[@]}"}
    nokv_bin="$root/target/release/nokv"
  fi
  stage "$nokv_bin" nokv "$stage_root/nokv"
  # `nokv mount` (the compose `worker` service) unmounts through fusermount3,
  # and the kernel releases a dead mount through it: ship the host's, with
  # the libraries it needs (fuse-client/install-fuse.sh installs it).
  if fusermount="$(command -v fusermount3)"; then
    mkdir -p "$stage_root/nokv/files/usr/bin"
    cp -L "$fusermount" "$stage_root/nokv/files/usr/bin/fusermount3"
    while read -r path; do
      [[ -n "$path" && -e "$path" ]] || continue
      cp -L --parents "$path" "$stage_root/nokv/runtime/"
    done < <(ldd "$fusermount" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u)
  else
    log "no fusermount3 on this host: the image cannot run \`nokv mount\` (bash fuse-client/install-fuse.sh)"
  fi
  mkdir -p "$stage_root/nokv/files/mnt/nokv"   # the worker's mount point
  image "$root/docker/Dockerfile" "$stage_root/nokv" "$nokv_tag"
fi

if [[ -z "$only" || "$only" == "s3s-fs" ]]; then
  s3_bin="${S3S_FS_BIN:-}"
  if [[ -z "$s3_bin" ]]; then
    s3_bin="$(command -v s3s-fs || true)"
    [[ -n "$s3_bin" ]] || s3_bin="$cargo_bin/s3s-fs"
    if [[ ! -x "$s3_bin" ]]; then
      bash "$root/blob/install-s3s-fs.sh"
      s3_bin="$cargo_bin/s3s-fs"
    fi
  fi
  stage "$s3_bin" s3s-fs "$stage_root/s3s-fs"
  # s3s-fs maps a bucket to a directory of its root: ship the `nokv` bucket so a
  # fresh named volume (which Docker fills from the image) already has it.
  mkdir -p "$stage_root/s3s-fs/files/data/nokv"
  image "$root/docker/s3s-fs.Dockerfile" "$stage_root/s3s-fs" "$s3_tag"
fi

if [[ -z "$only" || "$only" == "etcd" ]]; then
  etcd_bin="${ETCD_BIN:-$(command -v etcd || true)}"
  if [[ -z "$etcd_bin" ]]; then
    bash "$root/router/install-etcd.sh"
    etcd_bin="$(command -v etcd)"
  fi
  stage "$etcd_bin" etcd "$stage_root/etcd"
  image "$root/docker/etcd.Dockerfile" "$stage_root/etcd" "$etcd_tag"
fi
