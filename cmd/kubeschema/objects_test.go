package main

// Checks of what the rendered manifests mean, beyond what the API schema
// can say: which container each Service reaches, who may reach which port,
// the shutdown order's timings, the demo's replica count.

import (
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"testing"
	"time"
)

// sidecarName is the sidecar's container name in every kustomization.
const sidecarName = "replicache-sidecar"

// rendered builds a kustomization and returns its objects.
func rendered(t *testing.T, dir string) []map[string]any {
	t.Helper()
	out, err := exec.Command(tool(t, "KUSTOMIZE", "kustomize"), "build", dir).Output()
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	f := filepath.Join(t.TempDir(), "rendered.yaml")
	if err := os.WriteFile(f, out, 0o644); err != nil {
		t.Fatal(err)
	}
	objs, err := readYAMLDocs(f)
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

// field walks obj along path (map keys) and returns what is there, or nil.
func field(obj any, path ...string) any {
	for _, k := range path {
		m, _ := obj.(map[string]any)
		obj = m[k]
	}
	return obj
}

// maps returns the list at path as maps (non-map elements are dropped).
func maps(obj any, path ...string) []map[string]any {
	l, _ := field(obj, path...).([]any)
	var out []map[string]any
	for _, x := range l {
		if m, ok := x.(map[string]any); ok {
			out = append(out, m)
		}
	}
	return out
}

// ofKind returns the objects of kind.
func ofKind(objs []map[string]any, kind string) []map[string]any {
	var out []map[string]any
	for _, o := range objs {
		if o["kind"] == kind {
			out = append(out, o)
		}
	}
	return out
}

// theDeployment returns the one Deployment of a kustomization.
func theDeployment(t *testing.T, objs []map[string]any) map[string]any {
	t.Helper()
	ds := ofKind(objs, "Deployment")
	if len(ds) != 1 {
		t.Fatalf("%d Deployments; the checks expect one", len(ds))
	}
	return ds[0]
}

// podContainer returns the container called name in the Deployment's pod,
// among init containers (a native sidecar) and containers.
func podContainer(t *testing.T, deployment map[string]any, name string) map[string]any {
	t.Helper()
	pod := field(deployment, "spec", "template", "spec")
	for _, list := range []string{"initContainers", "containers"} {
		for _, c := range maps(pod, list) {
			if c["name"] == name {
				return c
			}
		}
	}
	t.Fatalf("the pod has no container %q", name)
	return nil
}

// legacyContainer returns the pod's (one) container that is not the sidecar.
func legacyContainer(t *testing.T, deployment map[string]any) map[string]any {
	t.Helper()
	var found []map[string]any
	for _, c := range maps(deployment, "spec", "template", "spec", "containers") {
		if c["name"] != sidecarName {
			found = append(found, c)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d containers beside the sidecar; the checks expect one", len(found))
	}
	return found[0]
}

// containerPorts returns a container's port numbers by name.
func containerPorts(c map[string]any) map[string]int {
	out := map[string]int{}
	for _, p := range maps(c, "ports") {
		n, _ := p["containerPort"].(int)
		name, _ := p["name"].(string)
		out[name] = n
	}
	return out
}

func hasPort(ports map[string]int, n int) bool {
	for _, p := range ports {
		if p == n {
			return true
		}
	}
	return false
}

// matches reports whether every key of selector has its value in labels.
func matches(selector, labels any) bool {
	sel, _ := selector.(map[string]any)
	lab, _ := labels.(map[string]any)
	if len(sel) == 0 {
		return false // an empty selector is not what these manifests mean
	}
	for k, v := range sel {
		if lab[k] != v {
			return false
		}
	}
	return true
}

// TestDeployServicesTargetTheSidecarByNumber: every Service reaches the pod
// through the sidecar (never the legacy container directly, or the
// identity checks are bypassed), and by port number: a named targetPort
// resolves among a native sidecar's ports only from Kubernetes 1.32, while
// deploy/ supports older clusters.
func TestDeployServicesTargetTheSidecarByNumber(t *testing.T) {
	for _, dir := range kustomizations(t) {
		t.Run(dir, func(t *testing.T) {
			objs := rendered(t, dir)
			d := theDeployment(t, objs)
			sidecarPorts := containerPorts(podContainer(t, d, sidecarName))
			services := ofKind(objs, "Service")
			if len(services) == 0 {
				t.Fatal("no Service")
			}
			for _, svc := range services {
				name := field(svc, "metadata", "name")
				if !matches(field(svc, "spec", "selector"), field(d, "spec", "template", "metadata", "labels")) {
					t.Errorf("Service %v does not select the Deployment's pods", name)
				}
				for _, p := range maps(svc, "spec", "ports") {
					n, ok := p["targetPort"].(int)
					switch {
					case !ok:
						t.Errorf("Service %v port %v: targetPort %v is not a number", name, p["name"], p["targetPort"])
					case !hasPort(sidecarPorts, n):
						t.Errorf("Service %v port %v: targetPort %d is not a port of the sidecar %v", name, p["name"], n, sidecarPorts)
					}
				}
			}
		})
	}
}

// TestDeployDemoRunsOneReplica: the demo's todo-api keeps its data in
// memory; two copies behind one Service would each hold different data
// and clients would see it change from pull to pull.
func TestDeployDemoRunsOneReplica(t *testing.T) {
	d := theDeployment(t, rendered(t, filepath.Join("..", "..", "deploy", "examples", "todo")))
	if r := field(d, "spec", "replicas"); r != 1 {
		t.Errorf("the demo runs %v replicas of an in-memory API; want 1", r)
	}
	if s := field(d, "spec", "strategy", "type"); s != "Recreate" {
		t.Errorf("the demo's strategy is %v: a rolling update runs two copies at once; want Recreate", s)
	}
}

// TestDeployDisruptionBudgetsLetNodesDrain: a budget that requires as many
// pods as there are refuses every eviction, and node drains hang on it.
func TestDeployDisruptionBudgetsLetNodesDrain(t *testing.T) {
	for _, dir := range kustomizations(t) {
		t.Run(dir, func(t *testing.T) {
			objs := rendered(t, dir)
			d := theDeployment(t, objs)
			replicas, _ := field(d, "spec", "replicas").(int)
			for _, pdb := range ofKind(objs, "PodDisruptionBudget") {
				if !matches(field(pdb, "spec", "selector", "matchLabels"), field(d, "spec", "template", "metadata", "labels")) {
					continue
				}
				if least, ok := field(pdb, "spec", "minAvailable").(int); ok && least >= replicas {
					t.Errorf("PodDisruptionBudget %v: minAvailable %d with %d replicas allows no eviction", field(pdb, "metadata", "name"), least, replicas)
				}
				if most, ok := field(pdb, "spec", "maxUnavailable").(int); ok && most == 0 {
					t.Errorf("PodDisruptionBudget %v: maxUnavailable 0 allows no eviction", field(pdb, "metadata", "name"))
				}
			}
		})
	}
}

// monitoringNamespace is the namespace the base lets scrape the admin port.
var monitoringNamespace = map[string]any{"kubernetes.io/metadata.name": "monitoring"}

// TestDeployNetworkPolicyOnlyTheSidecarIsReachable: from outside the pod,
// only the sidecar's public port is open to all and its admin port to the
// monitoring namespace; the legacy container's port is reachable through
// the sidecar only, or its identity-header stripping and
// SIDECAR_PASSTHROUGH_DENY protect nothing.
func TestDeployNetworkPolicyOnlyTheSidecarIsReachable(t *testing.T) {
	for _, dir := range kustomizations(t) {
		t.Run(dir, func(t *testing.T) {
			objs := rendered(t, dir)
			d := theDeployment(t, objs)
			podLabels := field(d, "spec", "template", "metadata", "labels")
			sidecar := containerPorts(podContainer(t, d, sidecarName))
			legacy := containerPorts(legacyContainer(t, d))
			var policies []map[string]any
			for _, np := range ofKind(objs, "NetworkPolicy") {
				if matches(field(np, "spec", "podSelector", "matchLabels"), podLabels) {
					policies = append(policies, np)
				}
			}
			if len(policies) != 1 {
				t.Fatalf("%d NetworkPolicies select the pod; want 1", len(policies))
			}
			np := policies[0]
			types, _ := field(np, "spec", "policyTypes").([]any)
			if !slices.Contains(types, any("Ingress")) {
				t.Fatalf("the NetworkPolicy does not restrict ingress: policyTypes %v", types)
			}
			open := map[int]bool{}       // ports allowed from anywhere
			restricted := map[int]bool{} // ports allowed from the monitoring namespace only
			for i, rule := range maps(np, "spec", "ingress") {
				ports := maps(rule, "ports")
				if len(ports) == 0 {
					t.Errorf("ingress rule %d allows every port, the legacy container's included", i)
				}
				peers := maps(rule, "from")
				onlyMonitoring := len(peers) > 0
				for _, p := range peers {
					if p["ipBlock"] != nil || !reflect.DeepEqual(field(p, "namespaceSelector", "matchLabels"), monitoringNamespace) {
						onlyMonitoring = false
					}
				}
				for _, p := range ports {
					n, ok := p["port"].(int)
					switch {
					case !ok:
						t.Errorf("ingress rule %d: port %v is not a number", i, p["port"])
					case p["endPort"] != nil:
						t.Errorf("ingress rule %d: a port range (%d-%v)", i, n, p["endPort"])
					case hasPort(legacy, n):
						t.Errorf("ingress rule %d opens the legacy container's port %d: callers could skip the sidecar", i, n)
					case !hasPort(sidecar, n):
						t.Errorf("ingress rule %d: port %d is not a port of the sidecar %v", i, n, sidecar)
					case len(peers) == 0:
						open[n] = true
					case onlyMonitoring:
						restricted[n] = true
					default:
						t.Errorf("ingress rule %d: port %d allowed from peers other than the monitoring namespace: %v", i, n, peers)
					}
				}
			}
			if want := sidecar["http"]; !open[want] {
				t.Errorf("the sidecar's http port %d is not open: the Service would reach nothing", want)
			}
			if want := sidecar["admin"]; open[want] || !restricted[want] {
				t.Errorf("the admin port %d: open to all %v, to the monitoring namespace %v; want only the latter", want, open[want], restricted[want])
			}
		})
	}
}

// legacyOwnShutdown is what the grace period must leave the legacy
// container to exit by itself after SIGTERM (a web server finishing its
// requests).
const legacyOwnShutdown = 10 * time.Second

// TestDeployShutdownOrder: the kubelet signals the legacy container first
// and the native sidecar only once it has exited. The legacy container
// must keep serving (preStop) for at least the time the sidecar allows
// for endpoints to update (SIDECAR_DRAIN_DELAY), or requests still
// routed to the pod meet a dead API behind a live sidecar; and the grace
// period must hold that delay, the legacy container's own exit and the
// sidecar's whole shutdown.
func TestDeployShutdownOrder(t *testing.T) {
	for _, dir := range kustomizations(t) {
		t.Run(dir, func(t *testing.T) {
			d := theDeployment(t, rendered(t, dir))
			sidecar := podContainer(t, d, sidecarName)
			if sidecar["restartPolicy"] != "Always" || !slices.ContainsFunc(maps(d, "spec", "template", "spec", "initContainers"), func(c map[string]any) bool { return c["name"] == sidecarName }) {
				t.Fatal("the sidecar is not a native sidecar (an init container with restartPolicy: Always): it would stop with the legacy container, not after it")
			}
			env := map[string]string{}
			for _, e := range maps(sidecar, "env") {
				name, _ := e["name"].(string)
				if v, ok := e["value"].(string); ok {
					env[name] = v
				}
			}
			duration := func(name string) time.Duration {
				v, err := time.ParseDuration(env[name])
				if err != nil {
					t.Fatalf("the sidecar's %s is %q; the check needs it set: %v", name, env[name], err)
				}
				return v
			}
			drain, shutdown := duration("SIDECAR_DRAIN_DELAY"), duration("SIDECAR_SHUTDOWN_TIMEOUT")
			secs, ok := field(legacyContainer(t, d), "lifecycle", "preStop", "sleep", "seconds").(int)
			if !ok {
				t.Fatal("the legacy container has no preStop sleep: it stops while the pod still gets requests")
			}
			preStop := time.Duration(secs) * time.Second
			if preStop < drain {
				t.Errorf("the legacy container's preStop sleep (%v) is shorter than SIDECAR_DRAIN_DELAY (%v)", preStop, drain)
			}
			grace, _ := field(d, "spec", "template", "spec", "terminationGracePeriodSeconds").(int)
			if need := preStop + legacyOwnShutdown + shutdown; time.Duration(grace)*time.Second < need {
				t.Errorf("terminationGracePeriodSeconds %d is below preStop %v + the legacy container's own exit %v + SIDECAR_SHUTDOWN_TIMEOUT %v = %v",
					grace, preStop, legacyOwnShutdown, shutdown, need)
			}
		})
	}
}
