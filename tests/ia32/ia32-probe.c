/* ia32-probe: the smallest 32-bit program there is. It exits 0 through the ia32 system
 * call gate, with no libc and no loader, so that it runs wherever the kernel runs 32-bit
 * code at all. host-runs-ia32 execs it to tell whether this host does. */
void _start(void) {
  __asm__ volatile("movl $1, %eax\n\txorl %ebx, %ebx\n\tint $0x80");
}
