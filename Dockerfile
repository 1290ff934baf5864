# pgtoken container image: a static binary on distroless, running as nonroot.
#   docker build -t pgtoken --build-arg VERSION=$(git describe --tags --always --dirty) .
# (the version make build stamps; pgtoken version prints it).
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/pgtoken ./cmd/pgtoken

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/pgtoken /pgtoken
# 6432: clients; 9432: /metrics, /healthz, /readyz (metrics_listen).
EXPOSE 6432 9432
ENTRYPOINT ["/pgtoken"]
CMD ["serve", "--config", "/etc/pgtoken/pgtoken.yaml"]
