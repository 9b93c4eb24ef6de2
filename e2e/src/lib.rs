//! raftkv-e2e: the pod runner (pods of the local control plane as real
//! processes) and the test harness around it. Work in progress (issue 4).
