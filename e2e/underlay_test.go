package e2e

import (
	"context"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/netplugin/netplugin/internal/nstest"
)

var arpReply = regexp.MustCompile(`Reply (\S+) is-at ([0-9a-f:]{17})`)

// TestVTEPAnswersARPOnce: a host's VTEP address answers ARP once, with the
// MAC of br-phy that holds it. The kernel also sees every frame of the
// underlay port OVS holds, and left alone it answers there too, with the
// port's MAC: a peer that learns that one sends its tunnel traffic where no
// tunnel ends, and loses all of it until it asks again (seen here: an OVS
// VXLAN network cut between two hosts for good).
func TestVTEPAnswersARPOnce(t *testing.T) {
	c := sharedCluster(t)
	for _, pair := range [][2]string{{"h2", "h1"}, {"h1", "h3"}} {
		asker, owner := pair[0], pair[1]
		f := strings.Fields(nstest.Exec(t, c.ns(owner), "ip", "-br", "link", "show", "br-phy"))
		if len(f) < 3 {
			t.Fatalf("br-phy of %s: %v", owner, f)
		}
		mac := f[2]
		got := arpReplies(t, c.ns(asker), c.vtep(owner))
		// The first check proves the question is answered at all.
		if len(got) == 0 {
			t.Fatalf("%s asked for %s (%s's VTEP): no ARP reply", asker, c.vtep(owner), owner)
		}
		for _, m := range got {
			if m != mac {
				t.Fatalf("%s's VTEP %s answered ARP as %v; want br-phy's %s only", owner, c.vtep(owner), got, mac)
			}
		}
		t.Logf("%s asked for %s: %d reply, from br-phy %s", asker, c.vtep(owner), len(got), mac)
	}
}

// arpReplies makes the kernel of namespace ns resolve ip afresh (over br-phy)
// and returns the MACs of every ARP reply for ip that reached it.
func arpReplies(t *testing.T, ns, ip string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dump := exec.CommandContext(ctx, "ip", "netns", "exec", ns, "tcpdump", "-l", "-n", "-i", "br-phy", "arp[6:2] = 2")
	var out strings.Builder
	dump.Stdout = &out
	stderr, err := dump.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := dump.Start(); err != nil {
		t.Fatal(err)
	}
	// tcpdump says "listening on" once it captures.
	buf := make([]byte, 512)
	var head string
	for !strings.Contains(head, "listening on") {
		n, err := stderr.Read(buf)
		if err != nil {
			t.Fatalf("tcpdump in %s: %v: %s", ns, err, head)
		}
		head += string(buf[:n])
	}
	nstest.Exec(t, ns, "ip", "neigh", "flush", "dev", "br-phy")
	nstest.Exec(t, ns, "ping", "-c", "1", "-W", "2", ip)
	time.Sleep(time.Second) // a second answer comes within microseconds of the first
	_ = dump.Process.Signal(os.Interrupt)
	_ = dump.Wait()
	var macs []string
	for _, m := range arpReply.FindAllStringSubmatch(out.String(), -1) {
		if m[1] == ip {
			macs = append(macs, m[2])
		}
	}
	return macs
}
