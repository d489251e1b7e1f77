/* What bpf/drop_filter.c and its control plane (labkit/dataplanes/drop_filter.py) share:
 * the Python names come from these enums (labkit.bpf_enums.enum_names), nowhere else. */
#ifndef LABKIT_DROP_FILTER_H
#define LABKIT_DROP_FILTER_H

/* Verdicts, the index of `counters`; Python: "pass", "drop_all", ... */
enum drop_filter_verdict {
    DF_PASS = 0,
    DF_DROP_ALL,
    DF_DROP_PROTO,
    DF_DROP_PORT,
    DF_DROP_SRC,
    DF_VERDICT_MAX, /* the number of verdicts, not one of them */
};

/* Bits of active[0]: which rule kinds hold any rule. */
enum drop_filter_rule {
    DF_RULE_ALL = 1 << 0,
    DF_RULE_PROTO = 1 << 1,
    DF_RULE_PORT = 1 << 2,
    DF_RULE_SRC = 1 << 3,
};

#endif
