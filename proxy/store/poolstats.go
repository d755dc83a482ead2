package store

import (
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
)

// poolCollector exports the Postgres pool's statistics at scrape time.
type poolCollector struct {
	pool                                          *pgxpool.Pool
	acquired, idle, total, max                    *prometheus.Desc
	acquires, emptyAcquires, canceled, acquireDur *prometheus.Desc
}

// NewPoolCollector returns a collector of pool's statistics, read at scrape
// time and named <namespace>_db_pool_*.
func NewPoolCollector(pool *pgxpool.Pool, namespace string) prometheus.Collector {
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(namespace, "db_pool", name), help, nil, nil)
	}
	return &poolCollector{
		pool:          pool,
		acquired:      d("acquired_connections", "Connections in use."),
		idle:          d("idle_connections", "Idle connections."),
		total:         d("connections", "Open connections."),
		max:           d("max_connections", "Maximum size of the pool."),
		acquires:      d("acquires_total", "Connections acquired from the pool."),
		emptyAcquires: d("empty_acquires_total", "Acquires that had to wait because the pool was empty."),
		canceled:      d("canceled_acquires_total", "Acquires abandoned because their context ended."),
		acquireDur:    d("acquire_wait_seconds_total", "Total time spent waiting to acquire connections."),
	}
}

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.acquired, c.idle, c.total, c.max, c.acquires, c.emptyAcquires, c.canceled, c.acquireDur} {
		ch <- d
	}
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.pool.Stat()
	// promlinter cannot follow a Desc held in a variable; the names are
	// built with BuildFQName in NewPoolCollector and linted at run time by
	// the metrics exposition test.
	gauge := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v) //nolint:promlinter // see above
	}
	counter := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v) //nolint:promlinter // see above
	}
	gauge(c.acquired, float64(s.AcquiredConns()))
	gauge(c.idle, float64(s.IdleConns()))
	gauge(c.total, float64(s.TotalConns()))
	gauge(c.max, float64(s.MaxConns()))
	counter(c.acquires, float64(s.AcquireCount()))
	counter(c.emptyAcquires, float64(s.EmptyAcquireCount()))
	counter(c.canceled, float64(s.CanceledAcquireCount()))
	counter(c.acquireDur, s.AcquireDuration().Seconds())
}
