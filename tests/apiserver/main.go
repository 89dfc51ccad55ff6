// Test-only harness (never shipped): a real etcd (embedded) and the real kube-apiserver
// (k8s.io/kubernetes/cmd/kube-apiserver/app, the same code as the release binary) in one process.
//
//	apiserver-harness serve --dir DIR
//	    Starts etcd + kube-apiserver on 127.0.0.1 with authorization Node,RBAC, the default
//	    admission chain (ValidatingAdmissionPolicy is GA and on) plus NodeRestriction, and a
//	    service-account issuer + signing key so TokenRequest works. When /readyz answers 200 it
//	    writes DIR/kubeconfig (admin, system:masters), DIR/server-url, DIR/ca.crt and
//	    DIR/admin-token, then prints "ready" on stdout. Stops cleanly on SIGTERM/SIGINT or when
//	    stdin reaches EOF (the parent test process died), exit code 0.
//	apiserver-harness render PATH...
//	    Prints a JSON array of the Kubernetes objects in PATH: a directory with a
//	    kustomization.yaml is built with kustomize (the same library as `kubectl kustomize`),
//	    a YAML file is split into its documents.
//	apiserver-harness expire-token --dir DIR [--offset -1h] < TOKEN
//	    Reads a service-account token on stdin and prints it with exp moved to now+offset
//	    (default one hour ago), re-signed with the service-account key of the `serve --dir`
//	    DIR: a token whose only fault is its age (or, with a positive offset, a valid control).
//	apiserver-harness version
//	    Prints the Kubernetes version this harness was built from.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"gopkg.in/go-jose/go-jose.v2/jwt"
	apiextensionsscheme "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset/scheme"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/apiserver/pkg/admission/plugin/policy/validating"
	"k8s.io/apiserver/pkg/cel/openapi/resolver"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	k8sscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/util/keyutil"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
	"k8s.io/kubernetes/pkg/controller/validatingadmissionpolicystatus"
	"k8s.io/kubernetes/pkg/generated/openapi"
	"k8s.io/kubernetes/pkg/serviceaccount"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// KubernetesVersion must match the k8s.io/kubernetes requirement in go.mod (build.sh checks it).
const KubernetesVersion = "v1.37.2"

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:])
	case "render":
		err = render(os.Args[2:])
	case "expire-token":
		err = expireToken(os.Args[2:])
	case "issue-cert":
		err = issueCert(os.Args[2:])
	case "version":
		fmt.Println(KubernetesVersion)
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "apiserver-harness: %v\n", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: apiserver-harness serve --dir DIR [--cleanup] | render PATH... | expire-token --dir DIR [--offset -1h] < TOKEN | issue-cert --dir DIR --cn CN [--org O] --out PREFIX | version")
	os.Exit(2)
}

// ---------------------------------------------------------------------------------------------
// render

func render(paths []string) error {
	var out []map[string]any
	for _, p := range paths {
		objs, err := renderOne(p)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		out = append(out, objs...)
	}
	if out == nil {
		out = []map[string]any{}
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

func renderOne(p string) ([]map[string]any, error) {
	st, err := os.Stat(p)
	if err != nil {
		return nil, err
	}
	var data []byte
	if st.IsDir() {
		k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
		resMap, err := k.Run(filesys.MakeFsOnDisk(), p)
		if err != nil {
			return nil, fmt.Errorf("kustomize build: %w", err)
		}
		data, err = resMap.AsYaml()
		if err != nil {
			return nil, err
		}
	} else {
		data, err = os.ReadFile(p)
		if err != nil {
			return nil, err
		}
	}
	var objs []map[string]any
	dec := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for {
		doc, err := dec.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		var obj map[string]any
		// yaml.YAMLToJSONStrict rejects duplicate keys, as the API server would.
		j, err := yaml.YAMLToJSONStrict(doc)
		if err != nil {
			return nil, err
		}
		if err := json.Unmarshal(j, &obj); err != nil {
			return nil, err
		}
		if obj == nil {
			continue
		}
		objs = append(objs, obj)
	}
	return objs, nil
}

// ---------------------------------------------------------------------------------------------
// serve

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	dir := fs.String("dir", "", "directory for state, certificates and the kubeconfig (required)")
	cleanup := fs.Bool("cleanup", false, "remove --dir when the harness exits")
	verbosity := fs.String("v", "0", "kube-apiserver log verbosity")
	// For a kubelet outside this machine's loopback (tests/node_e2e.rs: a QEMU guest behind user
	// networking reaches this machine's 127.0.0.1 as 10.0.2.2): the address the `kubernetes`
	// Service's endpoints name and the serving certificate carries. Unset: 127.0.0.1 and no
	// endpoints (the API server tests need no Service).
	advertise := fs.String("advertise-address", "", "address published in the kubernetes Service's endpoints (default: none, 127.0.0.1)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		return errors.New("serve: --dir is required")
	}
	d, err := filepath.Abs(*dir)
	if err != nil {
		return err
	}
	if *cleanup {
		defer os.RemoveAll(d)
	}
	for _, sub := range []string{"", "etcd", "pki", "apiserver-certs"} {
		if err := os.MkdirAll(filepath.Join(d, sub), 0o700); err != nil {
			return err
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Stop on SIGTERM/SIGINT, and when stdin closes: the test process holds the write end of
	// our stdin, so when it dies for any reason (even SIGKILL) we shut down too.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "apiserver-harness: %v received, shutting down\n", s)
		cancel()
		s = <-sigs
		fmt.Fprintf(os.Stderr, "apiserver-harness: second %v, exiting now\n", s)
		os.Exit(1)
	}()
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		fmt.Fprintln(os.Stderr, "apiserver-harness: stdin closed, shutting down")
		// kube-apiserver stops on its own signal context (genericapiserver.SetupSignalContext,
		// set up by NewAPIServerCommand), not on cmd.Context(): signal ourselves.
		_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
	}()

	advertiseIP := net.ParseIP("127.0.0.1")
	reconciler := "none"
	if *advertise != "" {
		if advertiseIP = net.ParseIP(*advertise); advertiseIP == nil {
			return fmt.Errorf("serve: --advertise-address %q is not an IP address", *advertise)
		}
		reconciler = "lease"
	}
	pki, err := writePKI(filepath.Join(d, "pki"), advertiseIP)
	if err != nil {
		return fmt.Errorf("pki: %w", err)
	}

	etcdURL, stopEtcd, err := startEtcd(ctx, filepath.Join(d, "etcd"))
	if err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	defer stopEtcd()

	port, err := freePort()
	if err != nil {
		return err
	}
	serverURL := fmt.Sprintf("https://127.0.0.1:%d", port)
	apiArgs := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=" + advertiseIP.String(),
		fmt.Sprintf("--secure-port=%d", port),
		"--cert-dir=" + filepath.Join(d, "apiserver-certs"),
		"--tls-cert-file=" + pki.serverCert,
		"--tls-private-key-file=" + pki.serverKey,
		"--token-auth-file=" + pki.tokenFile,
		"--authorization-mode=Node,RBAC",
		// ValidatingAdmissionPolicy is in the default plugin set (GA since 1.30);
		// NodeRestriction is what every real cluster adds on top.
		"--enable-admission-plugins=NodeRestriction",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--api-audiences=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + pki.saKey,
		"--service-account-signing-key-file=" + pki.saKey,
		"--service-cluster-ip-range=10.96.0.0/16",
		"--endpoint-reconciler-type=" + reconciler,
		// Client certificates signed by the harness CA (issue-cert): a kubelet's system:node:<name>.
		"--client-ca-file=" + pki.caFile,
		// GA and locked on since 1.32; stated so the dependency is explicit.
		"--feature-gates=ServiceAccountTokenPodNodeInfo=true",
		"--profiling=false",
		"--v=" + *verbosity,
	}
	cmd := app.NewAPIServerCommand()
	cmd.SetArgs(apiArgs)
	apiDone := make(chan error, 1)
	go func() {
		apiDone <- cli.RunNoErrOutput(cmd)
	}()

	if err := waitReady(ctx, serverURL, pki, apiDone); err != nil {
		cancel()
		return err
	}

	adminConfig := &rest.Config{
		Host:            serverURL,
		BearerToken:     pki.adminToken,
		TLSClientConfig: rest.TLSClientConfig{CAData: pki.caPEM},
		UserAgent:       "apiserver-harness",
	}
	if err := startPolicyStatusController(ctx, adminConfig); err != nil {
		cancel()
		return fmt.Errorf("validating admission policy status controller: %w", err)
	}

	kubeconfig := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: harness
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: admin
  user:
    token: %s
contexts:
- name: admin@harness
  context:
    cluster: harness
    user: admin
current-context: admin@harness
`, serverURL, b64(pki.caPEM), pki.adminToken)
	for name, content := range map[string]string{
		"kubeconfig":  kubeconfig,
		"server-url":  serverURL + "\n",
		"ca.crt":      string(pki.caPEM),
		"admin-token": pki.adminToken + "\n",
	} {
		if err := writeFileAtomic(filepath.Join(d, name), []byte(content)); err != nil {
			return err
		}
	}
	fmt.Println("ready")

	var apiErr error
	select {
	case apiErr = <-apiDone:
		if ctx.Err() == nil {
			return fmt.Errorf("kube-apiserver exited unexpectedly: %v", apiErr)
		}
	case <-ctx.Done():
		select {
		case apiErr = <-apiDone:
		case <-time.After(90 * time.Second):
			return errors.New("kube-apiserver did not stop within 90s")
		}
	}
	fmt.Fprintf(os.Stderr, "apiserver-harness: kube-apiserver stopped (error: %v)\n", apiErr)
	return nil
}

// startPolicyStatusController runs the controller that fills ValidatingAdmissionPolicy
// status.typeChecking. In a cluster it runs in kube-controller-manager; this is the same code,
// wired the same way (cmd/kube-controller-manager/app/validatingadmissionpolicystatus.go).
func startPolicyStatusController(ctx context.Context, cfg *rest.Config) error {
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(client.Discovery()))
	schemaResolver := resolver.NewDefinitionsSchemaResolver(openapi.GetOpenAPIDefinitions, k8sscheme.Scheme, apiextensionsscheme.Scheme).
		Combine(&resolver.ClientDiscoveryResolver{Discovery: client.Discovery()})
	typeChecker := &validating.TypeChecker{SchemaResolver: schemaResolver, RestMapper: mapper}
	factory := informers.NewSharedInformerFactory(client, 0)
	c, err := validatingadmissionpolicystatus.NewController(
		factory.Admissionregistration().V1().ValidatingAdmissionPolicies(),
		client.AdmissionregistrationV1().ValidatingAdmissionPolicies(),
		typeChecker,
	)
	if err != nil {
		return err
	}
	factory.Start(ctx.Done())
	go c.Run(ctx, 1)
	return nil
}

func waitReady(ctx context.Context, serverURL string, pki *pkiFiles, apiDone <-chan error) error {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pki.caPEM)
	client := &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
	}
	deadline := time.Now().Add(3 * time.Minute)
	var last string
	for time.Now().Before(deadline) {
		select {
		case err := <-apiDone:
			return fmt.Errorf("kube-apiserver exited before becoming ready: %v", err)
		case <-ctx.Done():
			return errors.New("interrupted before ready")
		case <-time.After(100 * time.Millisecond):
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, serverURL+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+pki.adminToken)
		resp, err := client.Do(req)
		if err != nil {
			last = err.Error()
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			last = fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSpace(string(body)))
			continue
		}
		// kube-system and the default namespace are created by a post-start controller.
		ok := true
		for _, ns := range []string{"default", "kube-system"} {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, serverURL+"/api/v1/namespaces/"+ns, nil)
			req.Header.Set("Authorization", "Bearer "+pki.adminToken)
			resp, err := client.Do(req)
			if err != nil {
				ok, last = false, err.Error()
				break
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				ok, last = false, fmt.Sprintf("namespace %s: %d", ns, resp.StatusCode)
				break
			}
		}
		if ok {
			return nil
		}
	}
	return fmt.Errorf("kube-apiserver not ready within 3m: %s", last)
}

func startEtcd(ctx context.Context, dir string) (string, func(), error) {
	clientPort, err := freePort()
	if err != nil {
		return "", nil, err
	}
	peerPort, err := freePort()
	if err != nil {
		return "", nil, err
	}
	cURL := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", clientPort)}
	pURL := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", peerPort)}
	cfg := embed.NewConfig()
	cfg.Name = "harness"
	cfg.Dir = dir
	cfg.ListenClientUrls = []url.URL{cURL}
	cfg.AdvertiseClientUrls = []url.URL{cURL}
	cfg.ListenPeerUrls = []url.URL{pURL}
	cfg.AdvertisePeerUrls = []url.URL{pURL}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.LogLevel = "error"
	cfg.UnsafeNoFsync = true // test data only; much faster on shared CI disks
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return "", nil, err
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return "", nil, err
	case <-ctx.Done():
		e.Close()
		return "", nil, errors.New("interrupted while starting etcd")
	case <-time.After(60 * time.Second):
		e.Close()
		return "", nil, errors.New("etcd not ready within 60s")
	}
	return cURL.String(), func() { e.Close() }, nil
}

type pkiFiles struct {
	caPEM      []byte
	caFile     string
	serverCert string
	serverKey  string
	saKey      string
	tokenFile  string
	adminToken string
}

func writePKI(dir string, advertise net.IP) (*pkiFiles, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now().Add(-time.Hour)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "apiserver-harness-ca"},
		NotBefore:             now,
		NotAfter:              now.Add(10 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	caCert, _ := x509.ParseCertificate(caDER)
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "kube-apiserver"},
		NotBefore:    now,
		NotAfter:     now.Add(10 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"},
		// 10.96.0.1: the kubernetes Service's ClusterIP (first address of --service-cluster-ip-range),
		// which in-cluster clients dial.
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("10.96.0.1"), advertise},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tok := make([]byte, 24)
	if _, err := rand.Read(tok); err != nil {
		return nil, err
	}
	p := &pkiFiles{
		caPEM:      pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		caFile:     filepath.Join(dir, "ca.crt"),
		serverCert: filepath.Join(dir, "server.crt"),
		serverKey:  filepath.Join(dir, "server.key"),
		saKey:      filepath.Join(dir, "sa.key"),
		tokenFile:  filepath.Join(dir, "tokens.csv"),
		adminToken: "admin-" + hex.EncodeToString(tok),
	}
	srvKeyDER, _ := x509.MarshalECPrivateKey(srvKey)
	saKeyDER, _ := x509.MarshalECPrivateKey(saKey)
	caKeyDER, _ := x509.MarshalECPrivateKey(caKey)
	files := map[string][]byte{
		p.serverCert:                 pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srvDER}),
		p.serverKey:                  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: srvKeyDER}),
		p.saKey:                      pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: saKeyDER}),
		p.caFile:                     pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		filepath.Join(dir, "ca.key"): pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: caKeyDER}),
		// token,user,uid,"group1,group2"
		p.tokenFile: []byte(fmt.Sprintf("%s,harness-admin,harness-admin-uid,\"system:masters\"\n", p.adminToken)),
	}
	for name, content := range files {
		if err := os.WriteFile(name, content, 0o600); err != nil {
			return nil, err
		}
	}
	return p, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func b64(b []byte) string {
	return base64.StdEncoding.EncodeToString(b)
}

// ---------------------------------------------------------------------------------------------
// expire-token

// expireToken reads a service-account token (from TokenRequest) on stdin and prints the same
// token with exp moved to now+offset (default one hour ago), re-signed with the harness'
// service-account key: with a negative offset, a token valid in every respect except that it
// has expired; with a positive one, a control that must still authenticate.
func expireToken(args []string) error {
	fs := flag.NewFlagSet("expire-token", flag.ExitOnError)
	dir := fs.String("dir", "", "the serve --dir (required)")
	offset := fs.Duration("offset", -time.Hour, "exp relative to now")
	if err := fs.Parse(args); err != nil {
		return err
	}
	in, err := io.ReadAll(os.Stdin)
	if err != nil {
		return err
	}
	tok, err := jwt.ParseSigned(strings.TrimSpace(string(in)))
	if err != nil {
		return err
	}
	var public jwt.Claims
	private := map[string]any{}
	if err := tok.UnsafeClaimsWithoutVerification(&public, &private); err != nil {
		return err
	}
	for _, k := range []string{"iss", "sub", "aud", "exp", "nbf", "iat", "jti"} {
		delete(private, k)
	}
	now := time.Now()
	public.IssuedAt = jwt.NewNumericDate(now.Add(-2 * time.Hour))
	public.NotBefore = jwt.NewNumericDate(now.Add(-2 * time.Hour))
	public.Expiry = jwt.NewNumericDate(now.Add(*offset))
	keyPEM, err := os.ReadFile(filepath.Join(*dir, "pki", "sa.key"))
	if err != nil {
		return err
	}
	key, err := keyutil.ParsePrivateKeyPEM(keyPEM)
	if err != nil {
		return err
	}
	gen, err := serviceaccount.JWTTokenGenerator(public.Issuer, key)
	if err != nil {
		return err
	}
	out, err := gen.GenerateToken(context.Background(), &public, private)
	if err != nil {
		return err
	}
	fmt.Println(out)
	return nil
}

// ---------------------------------------------------------------------------------------------
// issue-cert

// issueCert writes PREFIX.crt and PREFIX.key: a client certificate for CN in organisation O
// (Kubernetes: user CN in group O), signed by the CA of a running `serve --dir DIR`, which the API
// server accepts through --client-ca-file. A kubelet's identity is CN system:node:<name>, O
// system:nodes: what the Node authorizer and NodeRestriction key on.
func issueCert(args []string) error {
	fs := flag.NewFlagSet("issue-cert", flag.ExitOnError)
	dir := fs.String("dir", "", "the serve --dir (required)")
	cn := fs.String("cn", "", "common name: the user (required)")
	org := fs.String("org", "", "organisation: the group")
	out := fs.String("out", "", "output prefix: writes PREFIX.crt and PREFIX.key (required)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" || *cn == "" || *out == "" {
		return errors.New("issue-cert: --dir, --cn and --out are required")
	}
	caPEM, err := os.ReadFile(filepath.Join(*dir, "pki", "ca.crt"))
	if err != nil {
		return err
	}
	block, _ := pem.Decode(caPEM)
	if block == nil {
		return errors.New("issue-cert: pki/ca.crt holds no PEM block")
	}
	caCert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return err
	}
	keyPEM, err := os.ReadFile(filepath.Join(*dir, "pki", "ca.key"))
	if err != nil {
		return err
	}
	caKey, err := keyutil.ParsePrivateKeyPEM(keyPEM)
	if err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return err
	}
	subject := pkix.Name{CommonName: *cn}
	if *org != "" {
		subject.Organization = []string{*org}
	}
	now := time.Now().Add(-time.Hour)
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      subject,
		NotBefore:    now,
		NotAfter:     now.Add(10 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(*out+".key", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return err
	}
	return os.WriteFile(*out+".crt", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}
