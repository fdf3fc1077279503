# One image for every role: `keyward controller|issuer|validator|all`.
# Build: make docker-build (docker build --build-arg VERSION=... -t ghcr.io/keyward/keyward:... .)
# The build stage runs on the build machine's platform and cross-compiles a static binary for
# the target platform (docker buildx --platform linux/amd64,linux/arm64).
FROM --platform=$BUILDPLATFORM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
ARG TARGETOS=linux
ARG TARGETARCH
RUN CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/keyward ./cmd/keyward

# distroless static: no shell, no package manager, CA certificates and tzdata only; runs as
# the nonroot user (65532), which the Helm chart's securityContext also requires.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/keyward /keyward
USER 65532:65532
ENTRYPOINT ["/keyward"]
