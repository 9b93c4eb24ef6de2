# kind for users' CI (needs Docker; cannot run on the development machines).
#   make e2e-kind     kind cluster (1.36), images, CRD + operator, scenario suite
#   make check-kind   syntax checks of the Dockerfile, kind config and scripts (part of `make lint`)

.PHONY: e2e-kind check-kind

e2e-kind: k8s-bins
	bash e2e/kind/e2e-kind.sh

check-kind:
	bash e2e/kind/check.sh
