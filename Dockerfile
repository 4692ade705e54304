# Multi-stage build of the endor binary. Not built in this project's CI (no Docker engine on
# our machines); kept deliberately simple. Build: docker build -t endor .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY migrations migrations
COPY benches benches
COPY tests tests
RUN cargo build --release --locked --bin endor

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates git \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home /var/lib/endor --create-home endor
COPY --from=build /src/target/release/endor /usr/local/bin/endor
COPY config /etc/endor
USER endor
WORKDIR /var/lib/endor
ENV ENDOR_CONFIG=/etc/endor/endor.toml \
    ENDOR__SERVER__LISTEN=0.0.0.0:8080 \
    ENDOR__GATEWAY__LISTEN=0.0.0.0:8081
EXPOSE 8080 8081
ENTRYPOINT ["endor"]
CMD ["serve"]
