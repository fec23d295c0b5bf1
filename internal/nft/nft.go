// Package nft runs Debian's nft for the drivers that program nftables: a
// whole ruleset change as one `nft -f -` (one kernel transaction, so packets
// see the old ruleset or the new one, never a mix), and listings. nft acts on
// the network namespace of the calling OS thread, as netlink calls do, so a
// caller that switched its thread into a namespace programs that namespace.
package nft

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// ErrNoNft means the nft binary is missing.
var ErrNoNft = errors.New("nft not found (apt-get install nftables)")

// Runner runs one nft binary.
type Runner struct {
	bin string
}

// New finds nft in PATH or the sbin directories.
func New() (*Runner, error) {
	if p, err := exec.LookPath("nft"); err == nil {
		return &Runner{bin: p}, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin"} {
		p := filepath.Join(dir, "nft")
		if st, err := os.Stat(p); err == nil && st.Mode()&0o111 != 0 {
			return &Runner{bin: p}, nil
		}
	}
	return nil, ErrNoNft
}

// Apply runs script as one transaction: all of it takes effect, or (on any
// error) none of it.
func (r *Runner) Apply(ctx context.Context, script string) error {
	_, err := r.run(ctx, script, "-f", "-")
	return err
}

// Output runs nft with args and returns its standard output.
func (r *Runner) Output(ctx context.Context, args ...string) ([]byte, error) {
	return r.run(ctx, "", args...)
}

func (r *Runner) run(ctx context.Context, stdin string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, r.bin, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if len(msg) > 2000 {
			msg = msg[:2000] + "..."
		}
		return nil, fmt.Errorf("nft %s: %w: %s", strings.Join(args, " "), err, msg)
	}
	return out.Bytes(), nil
}

// Tables lists the tables of the namespace as family and name.
func (r *Runner) Tables(ctx context.Context) ([][2]string, error) {
	out, err := r.Output(ctx, "-j", "list", "tables")
	if err != nil {
		return nil, err
	}
	var doc struct {
		Nftables []struct {
			Table *struct {
				Family string `json:"family"`
				Name   string `json:"name"`
			} `json:"table"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return nil, fmt.Errorf("nft -j list tables: %w", err)
	}
	var tables [][2]string
	for _, o := range doc.Nftables {
		if o.Table != nil {
			tables = append(tables, [2]string{o.Table.Family, o.Table.Name})
		}
	}
	return tables, nil
}

// TableComment returns the comment of a table ("" for none), listing it
// without set elements (which may be many).
func (r *Runner) TableComment(ctx context.Context, family, name string) (string, error) {
	out, err := r.Output(ctx, "-t", "list", "table", family, name)
	if err != nil {
		return "", err
	}
	for _, l := range strings.Split(string(out), "\n") {
		l = strings.TrimSpace(l)
		if c, ok := strings.CutPrefix(l, "comment "); ok {
			return strings.Trim(c, `"`), nil
		}
		if strings.HasPrefix(l, "set ") || strings.HasPrefix(l, "map ") || strings.HasPrefix(l, "chain ") {
			break // the table's own comment comes first
		}
	}
	return "", nil
}

// MapElements returns the elements of a map whose keys are strings and values
// integers (such as ifname : ct zone).
func (r *Runner) MapElements(ctx context.Context, family, table, name string) (map[string]int, error) {
	out, err := r.Output(ctx, "-j", "list", "map", family, table, name)
	if err != nil {
		return nil, err
	}
	var doc struct {
		Nftables []struct {
			Map *struct {
				Elem [][2]json.RawMessage `json:"elem"`
			} `json:"map"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return nil, fmt.Errorf("nft -j list map %s %s %s: %w", family, table, name, err)
	}
	m := map[string]int{}
	for _, o := range doc.Nftables {
		if o.Map == nil {
			continue
		}
		for _, e := range o.Map.Elem {
			var k string
			var v int
			if json.Unmarshal(e[0], &k) == nil && json.Unmarshal(e[1], &v) == nil {
				m[k] = v
			}
		}
	}
	return m, nil
}

// Quote makes s an nft string literal. Callers pass only names they
// validated (interface names, labels), so this is a guard, not an escaper.
func Quote(s string) string {
	return `"` + strings.NewReplacer(`"`, "", `\`, "", "\n", "").Replace(s) + `"`
}
