# S3 server for local clusters: s3s-fs (a real HTTP/SigV4 S3 server over a
# directory; buckets are directories of /data), built like docker/Dockerfile from
# the host's ~/.cargo/bin/s3s-fs. `bash docker/build.sh` stages target/docker/s3s-fs
# (with /data/nokv: the `nokv` bucket) and builds nokv-s3s-fs:dev.
ARG BASE=scratch
ARG RUNTIME=host

FROM ${BASE} AS runtime-base

FROM ${BASE} AS runtime-host
COPY runtime/ /

FROM runtime-${RUNTIME}
LABEL io.nokv.image="1"
COPY files/ /
COPY bin/s3s-fs /usr/local/bin/s3s-fs
ENV PATH=/usr/local/bin:/usr/bin:/bin
EXPOSE 9000
ENTRYPOINT ["s3s-fs"]
# Credentials are flags (s3s-fs reads no environment); docker-compose.yml passes its own.
CMD ["--host", "0.0.0.0", "--port", "9000", "--access-key", "nokv", "--secret-key", "nokv-secret", "/data"]
