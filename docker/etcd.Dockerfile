# Control plane for local clusters: etcd, built like docker/Dockerfile from the
# host's etcd binary (Debian's etcd-server; `bash router/install-etcd.sh`).
# `bash docker/build.sh` stages target/docker/etcd and builds nokv-etcd:dev.
# Another etcd image (e.g. quay.io/coreos/etcd) works too: set NOKV_ETCD_IMAGE;
# docker-compose.yml passes every flag on the command line.
ARG BASE=scratch
ARG RUNTIME=host

FROM ${BASE} AS runtime-base

FROM ${BASE} AS runtime-host
COPY runtime/ /

FROM runtime-${RUNTIME}
LABEL io.nokv.image="1"
COPY files/ /
COPY bin/etcd /usr/local/bin/etcd
ENV PATH=/usr/local/bin:/usr/bin:/bin
EXPOSE 2379
ENTRYPOINT ["etcd"]
