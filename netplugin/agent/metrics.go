package agent

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/netplugin/netplugin/core"
)

// Metrics are the agent's Prometheus series, on a registry of their own (no
// global default registry).
type Metrics struct {
	Registry     *prometheus.Registry
	syncDuration prometheus.Histogram
	syncs        *prometheus.CounterVec
	endpoints    *prometheus.GaugeVec
	etcdErrors   prometheus.Counter
	etcdUp       prometheus.Gauge
	badKeys      prometheus.Gauge
	// policyGeneration is the policy generation each enforcing driver has in force.
	policyGeneration *prometheus.GaugeVec
}

// NewMetrics creates and registers the series.
func NewMetrics() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		syncDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "netplugin_reconcile_duration_seconds",
			Help: "Time of one observe-reconcile-apply pass.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}),
		syncs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "netplugin_reconcile_total",
			Help: "Reconcile passes by result."}, []string{"result"}),
		endpoints: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "netplugin_endpoints",
			Help: "Endpoints of this host by state."}, []string{"state"}),
		etcdErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "netplugin_etcd_errors_total",
			Help: "Failed etcd requests (registration, status writes)."}),
		etcdUp: prometheus.NewGauge(prometheus.GaugeOpts{Name: "netplugin_etcd_up",
			Help: "1 when the agent's last etcd request succeeded, 0 during an outage (the dataplane is kept)."}),
		badKeys: prometheus.NewGauge(prometheus.GaugeOpts{Name: "netplugin_mirror_bad_keys",
			Help: "Records of etcd the agent's mirror cannot use (undecodable, or of an unknown layout): skipped, logged, and in the status of the endpoint they stand for."}),
		policyGeneration: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "netplugin_policy_generation",
			Help: "Policy generation (a store revision) each enforcing driver has in force."}, []string{"driver"}),
	}
	m.Registry.MustRegister(m.syncDuration, m.syncs, m.endpoints, m.etcdErrors, m.etcdUp, m.badKeys, m.policyGeneration)
	return m
}

func (m *Metrics) observeSync(d time.Duration, err error) {
	m.syncDuration.Observe(d.Seconds())
	if err != nil {
		m.syncs.WithLabelValues("error").Inc()
	} else {
		m.syncs.WithLabelValues("ok").Inc()
	}
}

func (m *Metrics) setEndpoints(status map[string]core.EndpointStatus) {
	counts := map[string]float64{core.StateUp: 0, core.StateError: 0}
	for _, st := range status {
		counts[st.State]++
	}
	for s, n := range counts {
		m.endpoints.WithLabelValues(s).Set(n)
	}
}
