/* Internet checksums (RFC 1071) and their incremental update (RFC 1624), for programs
 * that rewrite headers in place at XDP (where the skb helpers bpf_l3/l4_csum_replace do
 * not exist). All values are 16-bit words / 32-bit fields exactly as they sit in the
 * packet (network byte order): one's-complement sums do not care which byte is first.
 */
#ifndef LABKIT_CSUM_HELPERS_H
#define LABKIT_CSUM_HELPERS_H

/* Fold a 32-bit one's-complement sum into 16 bits (two folds always suffice). */
static __always_inline u16 csum_fold(u32 s)
{
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    return (u16)s;
}

/* RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), the checksum *SUM after a 16-bit field
 * changes from OLD to NEW. */
static __always_inline void csum_replace2(u16 *sum, u16 old, u16 new)
{
    u32 s = (u16)~*sum;
    s += (u16)~old;
    s += new;
    *sum = ~csum_fold(s);
}

/* The same for a 32-bit field (an IPv4 address, or 32 bits of an IPv6 one). */
static __always_inline void csum_replace4(u16 *sum, u32 old, u32 new)
{
    csum_replace2(sum, (u16)(old >> 16), (u16)(new >> 16));
    csum_replace2(sum, (u16)old, (u16)new);
}

#endif /* LABKIT_CSUM_HELPERS_H */
