package docker

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
)

// Network is the part of a Docker network netplugin reads: its name (Docker
// never tells a network driver the name) and the endpoints Docker believes exist.
type Network struct {
	ID     string
	Name   string
	Driver string
	// Endpoints maps Docker endpoint IDs to container IDs.
	Endpoints map[string]string
}

// NetworkInspect looks a network up by ID. A missing network matches ErrNotFound.
// Never call it from inside a plugin handler: Docker holds locks while it waits
// for the plugin, and this request may need them.
func (c *Client) NetworkInspect(ctx context.Context, id string) (Network, error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	resp, err := c.get(ctx, "/networks/"+url.PathEscape(id))
	if err != nil {
		return Network{}, fmt.Errorf("docker network inspect %q: %w", id, err)
	}
	defer drainClose(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return Network{}, fmt.Errorf("docker network inspect %q: %w", id, readAPIError(resp))
	}
	var raw struct {
		ID         string `json:"Id"`
		Name       string `json:"Name"`
		Driver     string `json:"Driver"`
		Containers map[string]struct {
			EndpointID string `json:"EndpointID"`
		} `json:"Containers"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&raw); err != nil {
		return Network{}, fmt.Errorf("docker network inspect %q: decoding answer: %w", id, err)
	}
	n := Network{ID: raw.ID, Name: raw.Name, Driver: raw.Driver, Endpoints: map[string]string{}}
	for cid, c := range raw.Containers {
		n.Endpoints[c.EndpointID] = cid
	}
	return n, nil
}
