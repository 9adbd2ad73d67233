// libcni-driver drives a CNI plugin through libcni, the reference runtime library, exactly as
// containerd and CRI-O do (AddNetworkList, CheckNetworkList, DelNetworkList, GetVersionInfo).
// The Rust end-to-end test tests/cni.rs builds and runs it.
//
//	libcni-driver version PLUGIN
//	libcni-driver add|check|del CONFLIST CONTAINERID NETNS IFNAME [PODNS PODNAME]
//	libcni-driver cycles CONFLIST N NETNS IFNAME    (N ADD+DEL cycles, one container id each)
//
// CNI_PATH (the plugin directories) and CNI_CACHE_DIR (libcni's result cache) come from the
// environment. A result is printed as JSON on stdout; an error as {"code","msg","details"}
// (code 0 for an error that is not the plugin's), exiting 1.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

func fail(err error) {
	out := map[string]interface{}{"code": 0, "msg": err.Error()}
	var e *types.Error
	if errors.As(err, &e) {
		out = map[string]interface{}{"code": e.Code, "msg": e.Msg, "details": e.Details}
	}
	b, _ := json.Marshal(out)
	fmt.Println(string(b))
	os.Exit(1)
}

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: libcni-driver version PLUGIN | add|check|del CONFLIST ID NETNS IFNAME [PODNS PODNAME] | cycles CONFLIST N NETNS IFNAME")
		os.Exit(2)
	}
	paths := filepath.SplitList(os.Getenv("CNI_PATH"))
	cni := libcni.NewCNIConfigWithCacheDir(paths, os.Getenv("CNI_CACHE_DIR"), nil)
	ctx := context.Background()
	if os.Args[1] == "version" {
		info, err := cni.GetVersionInfo(ctx, os.Args[2])
		if err != nil {
			fail(err)
		}
		b, _ := json.Marshal(map[string]interface{}{"supportedVersions": info.SupportedVersions()})
		fmt.Println(string(b))
		return
	}
	list, err := libcni.ConfListFromFile(os.Args[2])
	if err != nil {
		fail(err)
	}
	rt := func(id, netns, ifname, podns, pod string) *libcni.RuntimeConf {
		args := [][2]string{{"IgnoreUnknown", "1"}}
		if podns != "" {
			args = append(args, [2]string{"K8S_POD_NAMESPACE", podns}, [2]string{"K8S_POD_NAME", pod})
		}
		return &libcni.RuntimeConf{ContainerID: id, NetNS: netns, IfName: ifname, Args: args}
	}
	switch os.Args[1] {
	case "add", "check", "del":
		if len(os.Args) < 6 {
			fail(fmt.Errorf("%s needs CONFLIST ID NETNS IFNAME", os.Args[1]))
		}
		podns, pod := "", ""
		if len(os.Args) >= 8 {
			podns, pod = os.Args[6], os.Args[7]
		}
		r := rt(os.Args[3], os.Args[4], os.Args[5], podns, pod)
		switch os.Args[1] {
		case "add":
			res, err := cni.AddNetworkList(ctx, list, r)
			if err != nil {
				fail(err)
			}
			b, _ := json.Marshal(res)
			fmt.Println(string(b))
		case "check":
			if err := cni.CheckNetworkList(ctx, list, r); err != nil {
				fail(err)
			}
			fmt.Println("{}")
		case "del":
			if err := cni.DelNetworkList(ctx, list, r); err != nil {
				fail(err)
			}
			fmt.Println("{}")
		}
	case "cycles":
		if len(os.Args) < 6 {
			fail(fmt.Errorf("cycles needs CONFLIST N NETNS IFNAME"))
		}
		n, err := strconv.Atoi(os.Args[3])
		if err != nil {
			fail(err)
		}
		start := time.Now()
		var addTotal, delTotal time.Duration
		for i := 0; i < n; i++ {
			r := rt(fmt.Sprintf("cycle%06d", i), os.Args[4], os.Args[5], "cycles", fmt.Sprintf("pod-%d", i))
			t := time.Now()
			if _, err := cni.AddNetworkList(ctx, list, r); err != nil {
				fail(fmt.Errorf("cycle %d ADD: %w", i, err))
			}
			addTotal += time.Since(t)
			t = time.Now()
			if err := cni.DelNetworkList(ctx, list, r); err != nil {
				fail(fmt.Errorf("cycle %d DEL: %w", i, err))
			}
			delTotal += time.Since(t)
		}
		b, _ := json.Marshal(map[string]interface{}{
			"cycles": n, "seconds": time.Since(start).Seconds(),
			"add_ms_avg": float64(addTotal.Microseconds()) / 1000 / float64(n),
			"del_ms_avg": float64(delTotal.Microseconds()) / 1000 / float64(n),
		})
		fmt.Println(string(b))
	default:
		fail(fmt.Errorf("unknown command %q", os.Args[1]))
	}
}
