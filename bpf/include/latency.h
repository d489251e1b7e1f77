/* What bpf/latency.c and its control plane (labkit/dataplanes/latency_probe.py) share. */
#ifndef LABKIT_LATENCY_H
#define LABKIT_LATENCY_H

/* The probe frame: Ethernet, IPv4 (no options), UDP to LAT_PORT, then this header. */
enum latency_frame {
    LAT_PORT = 7,             /* UDP destination port of probes (background traffic uses others) */
    LAT_MAGIC = 0x4c4b4c54,   /* "LKLT", host byte order, first word of the payload */
    LAT_PAYLOAD = 42,         /* offset of the probe header: 14 + 20 + 8 */
    LAT_STAMP = 50,           /* offset of the u64 send time (ns, bpf_ktime_get_ns) */
    LAT_TEMPLATE = 64,        /* bytes restored from lat_template before every send */
};

/* Every probe's delay is kept, in arrival order, for the control plane's HDR histogram. */
enum latency_samples {
    LAT_SAMPLES = 65536,      /* delays kept between two clears (a power of two); later probes are counted only */
};

/* lat_counts slots (per CPU). */
enum latency_counts {
    LAT_PROBES = 0,           /* probes taken at the sink (their delays kept) */
    LAT_OTHER = 1,            /* other frames the sink dropped (background load) */
    LAT_CLOCK_BACK = 2,       /* probes stamped later than they arrived: never on one host */
    LAT_SENT = 3,             /* probes the sender's program sent */
    LAT_MAX_NS = 4,           /* the largest delay seen (ns), not a count */
    LAT_COUNTS = 5,
};

#endif
