/* placeholder: replaced by the real programs */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include "uf_maps.h"

SEC("xdp")
int uf_xdp(struct xdp_md *ctx)
{
	return XDP_PASS;
}

SEC("classifier")
int uf_tc(struct __sk_buff *skb)
{
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
