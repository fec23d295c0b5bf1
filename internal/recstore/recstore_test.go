package recstore

import (
	"os"
	"path/filepath"
	"testing"
)

type rec struct {
	Key string `json:"key"`
	N   int    `json:"n"`
}

func TestRoundTripAndRecovery(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "eps")
	d := At(dir)
	if got, bad, err := List[rec](d); err != nil || len(got)+len(bad) != 0 {
		t.Fatalf("empty store: %v %v %v", got, bad, err)
	}
	for i, k := range []string{"t/a", "t/b"} {
		if err := d.Put(k, rec{Key: k, N: i}); err != nil {
			t.Fatal(err)
		}
	}
	var r rec
	if ok, err := d.Get("t/b", &r); !ok || err != nil || r.N != 1 {
		t.Fatalf("get: %v %v %+v", ok, err, r)
	}
	if ok, err := d.Get("t/none", &r); ok || err != nil {
		t.Fatalf("absent: %v %v", ok, err)
	}
	// A crash mid-write leaves a temporary file, a hand edit a broken record:
	// Open clears the first, List skips the second and says so.
	tmp := filepath.Join(dir, ".t%2Fc.json.tmp42")
	if err := os.WriteFile(tmp, []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "t%2Fbroken.json"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	d, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(tmp); !os.IsNotExist(err) {
		t.Fatalf("temporary file survived Open: %v", err)
	}
	got, bad, err := List[rec](d)
	if err != nil || len(got) != 2 || len(bad) != 1 {
		t.Fatalf("list: %v %v %v", got, bad, err)
	}
	for i := 0; i < 2; i++ { // deleting twice is fine
		if err := d.Del("t/a"); err != nil {
			t.Fatal(err)
		}
	}
	if ok, _ := d.Get("t/a", &r); ok {
		t.Fatal("deleted record still there")
	}
}
