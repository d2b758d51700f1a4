/* Code that restored tasks run while the controller builds them, before ptrace takes
 * over. It touches no stack and no TLS, so it is safe in threads made by raw clone3. */
	.text
	.globl kleap_park
	.type kleap_park, @function
/* void kleap_park(void): pause() forever. */
kleap_park:
1:	mov $34, %eax		/* __NR_pause */
	.globl kleap_park_gadget
kleap_park_gadget:		/* a `syscall` instruction: the first injection point */
	syscall
	jmp 1b
	.size kleap_park, .-kleap_park

	.globl kleap_clone_thread
	.type kleap_clone_thread, @function
/* long kleap_clone_thread(struct clone_args *args, size_t size): clone3 a thread that
 * parks at once. Returns the new tid, or -errno, in the caller. */
kleap_clone_thread:
	mov $435, %eax		/* __NR_clone3 */
	syscall
	test %rax, %rax
	jz 2f
	ret
2:	jmp kleap_park
	.size kleap_clone_thread, .-kleap_clone_thread

	.globl kleap_clone_process
	.type kleap_clone_process, @function
/* long kleap_clone_process(struct clone_args *args, size_t size): clone3 a process that
 * shares the caller's memory (CLONE_VM without CLONE_THREAD), asks to die with its
 * parent, and parks: it runs no C code, whose stack, heap and TLS are the caller's.
 * Returns the new pid, or -errno, in the caller. */
kleap_clone_process:
	mov $435, %eax		/* __NR_clone3 */
	syscall
	test %rax, %rax
	jz 3f
	ret
3:	mov $157, %eax		/* __NR_prctl */
	mov $1, %edi		/* PR_SET_PDEATHSIG */
	mov $9, %esi		/* SIGKILL */
	syscall
	jmp kleap_park
	.size kleap_clone_process, .-kleap_clone_process

	.section .note.GNU-stack,"",@progbits
