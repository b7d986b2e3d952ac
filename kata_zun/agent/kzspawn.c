/*
 * kz-spawn: the guest agent's small spawn path for exec (a process
 * joining a running container).
 *
 * The agent (a large Python process) starts this static binary with
 * posix_spawn (vfork: no copy of its page tables, no copy-on-write
 * faults); it does in a few system calls what the agent's forked child
 * did in Python (kata_zun.agent.guestlaunch, _spawn_joined and _become):
 *
 *   spawner: join the container's PID namespace for children, then
 *            clone3(CLONE_INTO_CGROUP | CLONE_PARENT): the process is
 *            born in the container's cgroup (charged against its pids
 *            limit from birth) and is the agent's child (it reaps it);
 *            its pid goes to the agent, the spawner exits;
 *   process: the container's other namespaces and root, a new session,
 *            no other fds, the workdir, the capability bounding set,
 *            ambient, permitted and effective sets, no_new_privs and
 *            the seccomp filter (both given by the agent), groups, gid,
 *            uid, then exec searched in the container's PATH.
 *
 * Policy (which capabilities, which filter, which user) stays in the
 * agent; this program only applies what it is given, and fails closed:
 * any refused step ends the process with 126 and a message, never a
 * process with less protection than asked for.
 *
 * Server mode ("kz-spawn --serve", fd 3 a SOCK_SEQPACKET socket to the
 * agent): the same spawner, started once and kept, so that an exec pays
 * neither the posix_spawn of the agent nor this program's exec and
 * start (about 4 ms of the 15 under TCG). Each request is one packet:
 * two native uint32 counts (arguments, environment entries), then that
 * many NUL-terminated strings, the arguments being argv[1..] below; its
 * SCM_RIGHTS carry the eleven fds below in order. The server joins the
 * PID namespace, clones the process exactly as the one-shot spawner
 * does, writes the pid line on the status pipe, closes the fds and
 * returns to its own PID namespace for the next request. A malformed
 * request gets a "fail" status (or is dropped without a status pipe);
 * end of file on the socket ends the server.
 *
 * fds: 0-2 stdio, 3 status pipe (to the agent), 4 PID namespace,
 * 5 cgroup directory, 6 ipc, 7 uts, 8 cgroup namespace, 9 mount
 * namespace, 10 the container's root directory.
 * argv: flags ("t" tty, "p" privileged, "-" none), capability mask
 * (hex), last capability, uid, gid, groups ("1,2" or ""), workdir (""
 * for /), seccomp program (hex of struct sock_filter, "" for none),
 * then the command. The environment is the process's.
 *
 * Status pipe: the spawner writes "\0pid <n>\n" or (when there is no
 * process) "fail <errno> <text>"; the process writes an error text only
 * if it fails before exec (the pipe is close-on-exec: EOF and no text
 * means it exec'd). Each is one write under PIPE_BUF, so they never
 * interleave, but the process may write before the spawner does.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/sched.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define ST 3
#define FD_PIDNS 4
#define FD_CGROUP 5
#define FD_ROOT 10
#define MAX_PROG 4096
#define MAX_GROUPS 256
/* Server mode: the most request bytes and fds (see above), and where the
 * server keeps its socket and its own PID namespace: above every fd a
 * request lands on, so that placing them never overwrites one. */
#define SERVE_MAX (128 * 1024)
#define SERVE_FDS 11
#define SERVE_SOCK 100
#define SERVE_OWN_PIDNS 101

static void fail(int code, const char *fmt, ...)
{
	char msg[4096];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(msg) - 1)
		n = sizeof(msg) - 1;
	if (n > 0 && write(ST, msg, n) < 0)
		code = 126;
	_exit(code);
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

static void mkdirs(const char *path)
{
	char buf[4096];
	size_t i, n = strlen(path);

	if (n >= sizeof(buf))
		return;
	memcpy(buf, path, n + 1);
	for (i = 1; i <= n; i++) {
		if (buf[i] == '/' || buf[i] == '\0') {
			char c = buf[i];

			buf[i] = '\0';
			mkdir(buf, 0755);   /* errors: chdir reports them */
			buf[i] = c;
		}
	}
}

static void confine(uint64_t keep, int last_cap, const char *prog_hex)
{
	struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
	struct __user_cap_data_struct data[2];
	static struct sock_filter prog[MAX_PROG];
	struct sock_fprog fprog;
	size_t len = strlen(prog_hex), i;
	unsigned char *raw = (unsigned char *)prog;
	int cap;

	for (cap = 0; cap <= last_cap && cap < 64; cap++) {
		if (!(keep & (1ULL << cap)) &&
		    prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL)
			fail(126, "drop capability %d: %s", cap, strerror(errno));
	}
	if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 &&
	    errno != EINVAL)
		fail(126, "clear ambient capabilities: %s", strerror(errno));
	memset(data, 0, sizeof(data));
	data[0].effective = data[0].permitted = (uint32_t)keep;
	data[1].effective = data[1].permitted = (uint32_t)(keep >> 32);
	if (syscall(SYS_capset, &hdr, data) != 0)
		fail(126, "capset: %s", strerror(errno));
	if (len % 16 || len / 16 > MAX_PROG || !len)
		fail(126, "seccomp filter: bad program");
	for (i = 0; i < len / 2; i++) {
		int hi = hexval(prog_hex[2 * i]), lo = hexval(prog_hex[2 * i + 1]);

		if (hi < 0 || lo < 0)
			fail(126, "seccomp filter: bad program");
		raw[i] = hi << 4 | lo;
	}
	fprog.len = len / 16;
	fprog.filter = prog;
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
		fail(126, "no_new_privs: %s", strerror(errno));
	if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &fprog, 0, 0) != 0)
		fail(126, "seccomp filter: %s", strerror(errno));
}

static void run(char **argv)
{
	const char *flags = argv[1], *workdir = argv[7];
	uint64_t keep = strtoull(argv[2], NULL, 16);
	int last_cap = atoi(argv[3]);
	uid_t uid = strtoul(argv[4], NULL, 10);
	gid_t gid = strtoul(argv[5], NULL, 10);
	gid_t groups[MAX_GROUPS];
	size_t ngroups = 0;
	char *p = argv[6], **cmd = argv + 10;
	static const int joined[] = {6, 7, 8, 9};  /* ipc uts cgroup mnt */
	const char *path, *name = cmd[0], *dir;
	static char candidate[8192];
	int i, best = ENOENT;
	struct stat st;

	while (*p && ngroups < MAX_GROUPS) {
		groups[ngroups++] = strtoul(p, &p, 10);
		if (*p == ',')
			p++;
		else if (*p)
			fail(126, "bad groups");
	}
	for (i = 0; i < 4; i++)
		if (setns(joined[i], 0) != 0)
			fail(126, "setns: %s", strerror(errno));
	if (fchdir(FD_ROOT) != 0 || chroot(".") != 0)
		fail(126, "chroot: %s", strerror(errno));
	if (setsid() < 0)
		fail(126, "setsid: %s", strerror(errno));
	if (strchr(flags, 't') && ioctl(0, TIOCSCTTY, 0) != 0)
		fail(126, "controlling tty: %s", strerror(errno));
	if (syscall(SYS_close_range, 4, ~0U, 0) != 0)
		fail(126, "close_range: %s", strerror(errno));
	if (*workdir && (stat(workdir, &st) != 0 || !S_ISDIR(st.st_mode)))
		mkdirs(workdir);
	if (!strchr(flags, 'p'))
		confine(keep, last_cap, argv[8]);
	if (setgroups(ngroups, groups) != 0)
		fail(126, "setgroups: %s", strerror(errno));
	if (setgid(gid) != 0)
		fail(126, "setgid: %s", strerror(errno));
	if (setuid(uid) != 0)
		fail(126, "setuid: %s", strerror(errno));
	if (chdir(*workdir ? workdir : "/") != 0)
		fail(126, "chdir to cwd (\"%s\") set in config.json failed: %s",
		     workdir, strerror(errno));
	if (strchr(name, '/')) {
		execv(name, cmd);
		fail(errno == ENOENT ? 127 : 126, "exec: \"%s\": %s", name,
		     strerror(errno));
	}
	path = getenv("PATH");
	if (!path)
		path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:"
		       "/sbin:/bin";
	for (dir = path;; dir = strchr(dir, ':') + 1) {
		size_t n = strcspn(dir, ":");

		if (snprintf(candidate, sizeof(candidate), "%.*s/%s", (int)n,
			     n ? dir : ".", name) < (int)sizeof(candidate)) {
			execv(candidate, cmd);
			/* Like execvp: "found but not runnable" wins. */
			if (best == ENOENT || errno != ENOENT)
				best = errno;
		}
		if (!dir[n])
			break;
	}
	if (best == ENOENT)
		fail(127, "exec: \"%s\": executable file not found in $PATH",
		     name);
	fail(126, "exec: \"%s\": %s", name, strerror(best));
}

static long clone_into(int cgroup_fd)
{
	struct clone_args args;

	memset(&args, 0, sizeof(args));
	args.flags = CLONE_INTO_CGROUP | CLONE_PARENT;
	args.cgroup = cgroup_fd;
	return syscall(SYS_clone3, &args, sizeof(args));
}

/* The pid line on the status pipe: one write (atomic, under PIPE_BUF)
 * that starts with a NUL, so the process's own error text, written
 * before or after it, is never inside it (parse_status).
 * Returns 0, or -1 when it could not be written whole. */
static int report_pid(int fd, long pid)
{
	char msg[64];
	int n = 1 + snprintf(msg + 1, sizeof(msg) - 1, "pid %ld\n", pid);

	msg[0] = '\0';
	return write(fd, msg, n) == n ? 0 : -1;
}

/* A refused request on the status pipe: "fail <errno> <text>". */
static void report_fail(int fd, const char *fmt, ...)
{
	char msg[256];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(msg) - 1)
		n = sizeof(msg) - 1;
	if (n > 0 && write(fd, msg, n) < 0)
		return;
}

/* One request: the fds are ours (close-on-exec) and closed here. */
static void serve_one(char *buf, size_t len, int *fds, int nfds)
{
	static char *args[SERVE_MAX / 2 + 2], *env[SERVE_MAX / 2 + 1];
	uint32_t nargs, nenv, i;
	char *p = buf + 8, *end = buf + len;
	long pid;

	if (nfds != SERVE_FDS)
		goto out;              /* no status pipe to tell */
	if (len < 8) {
		report_fail(fds[ST], "fail 22 kz-spawn: bad request");
		goto out;
	}
	memcpy(&nargs, buf, 4);
	memcpy(&nenv, buf + 4, 4);
	if (nargs < 10 || nargs > SERVE_MAX / 2 || nenv > SERVE_MAX / 2) {
		report_fail(fds[ST], "fail 22 kz-spawn: bad request");
		goto out;
	}
	args[0] = "kz-spawn";
	for (i = 0; i < nargs + nenv; i++) {
		char *nul = memchr(p, '\0', end - p);

		if (!nul) {
			report_fail(fds[ST], "fail 22 kz-spawn: bad request");
			goto out;
		}
		if (i < nargs)
			args[i + 1] = p;
		else
			env[i - nargs] = p;
		p = nul + 1;
	}
	args[nargs + 1] = NULL;
	env[nenv] = NULL;
	if (p != end || strcmp(args[9], "--") != 0) {
		report_fail(fds[ST], "fail 22 kz-spawn: bad request");
		goto out;
	}
	if (setns(fds[FD_PIDNS], CLONE_NEWPID) != 0) {
		report_fail(fds[ST], "fail %d setns pid: %s", errno, strerror(errno));
		goto out;
	}
	pid = clone_into(fds[FD_CGROUP]);
	if (pid == 0) {
		/* The request's fds to 0-10 (each source is 11 or above:
		 * 0-10 are held open, see serve()), then the one-shot
		 * process's steps; close_range there drops everything else. */
		for (i = 0; i < SERVE_FDS; i++)
			if (dup2(fds[i], i) != (int)i)
				_exit(126);
		if (fcntl(ST, F_SETFD, FD_CLOEXEC) != 0)
			_exit(126);
		close(FD_PIDNS);
		close(FD_CGROUP);
		environ = env;
		run(args);
	}
	if (pid < 0)
		report_fail(fds[ST], "fail %d clone3: %s", errno, strerror(errno));
	else
		report_pid(fds[ST], pid);
	/* Back to our own PID namespace: a request whose setns fails must
	 * not clone into the previous one's. */
	if (setns(SERVE_OWN_PIDNS, CLONE_NEWPID) != 0)
		_exit(126);
out:
	for (i = 0; i < (uint32_t)nfds; i++)
		close(fds[i]);
}

static int serve(void)
{
	static char buf[SERVE_MAX];
	char control[CMSG_SPACE(sizeof(int) * SERVE_FDS)];
	int fd, fds[SERVE_FDS];

	if (dup2(3, SERVE_SOCK) != SERVE_SOCK ||
	    fcntl(SERVE_SOCK, F_SETFD, FD_CLOEXEC) != 0)
		return 126;
	fd = open("/proc/self/ns/pid", O_RDONLY | O_CLOEXEC);
	if (fd < 0 || dup2(fd, SERVE_OWN_PIDNS) != SERVE_OWN_PIDNS ||
	    fcntl(SERVE_OWN_PIDNS, F_SETFD, FD_CLOEXEC) != 0)
		return 126;
	close(fd);
	close(3);
	/* 0-10 held open, so received fds land at 11 and above. */
	for (fd = 0; fd < SERVE_FDS; fd++)
		if (fcntl(fd, F_GETFD) < 0 &&
		    open("/dev/null", O_RDONLY) != fd)
			return 126;
	for (;;) {
		struct iovec iov = {buf, sizeof(buf)};
		struct msghdr msg;
		struct cmsghdr *cm;
		ssize_t n;
		int nfds = 0;

		memset(&msg, 0, sizeof(msg));
		msg.msg_iov = &iov;
		msg.msg_iovlen = 1;
		msg.msg_control = control;
		msg.msg_controllen = sizeof(control);
		n = recvmsg(SERVE_SOCK, &msg, MSG_CMSG_CLOEXEC);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return 0;          /* the agent closed its end */
		for (cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
			int k, got;

			if (cm->cmsg_level != SOL_SOCKET ||
			    cm->cmsg_type != SCM_RIGHTS)
				continue;
			got = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
			for (k = 0; k < got; k++) {
				int one;

				memcpy(&one, CMSG_DATA(cm) + k * sizeof(int),
				       sizeof(int));
				if (nfds < SERVE_FDS)
					fds[nfds++] = one;
				else
					close(one);
			}
		}
		if (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
			/* Cut short: never act on part of a request. */
			if (nfds == SERVE_FDS)
				report_fail(fds[ST], "fail 7 kz-spawn: request too big");
			while (nfds)
				close(fds[--nfds]);
			continue;
		}
		serve_one(buf, n, fds, nfds);
	}
}

int main(int argc, char **argv)
{
	long pid;

	if (argc == 2 && strcmp(argv[1], "--serve") == 0)
		return serve();
	if (argc < 11 || strcmp(argv[9], "--") != 0) {
		if (write(ST, "fail 22 kz-spawn: bad arguments", 31) < 0)
			return 126;
		return 126;
	}
	if (fcntl(ST, F_SETFD, FD_CLOEXEC) != 0)
		return 126;
	if (setns(FD_PIDNS, CLONE_NEWPID) != 0)
		fail(126, "fail %d setns pid: %s", errno, strerror(errno));
	pid = clone_into(FD_CGROUP);
	if (pid == 0) {
		close(FD_PIDNS);
		close(FD_CGROUP);
		run(argv);
	}
	if (pid < 0)
		fail(126, "fail %d clone3: %s", errno, strerror(errno));
	return report_pid(ST, pid) == 0 ? 0 : 126;
}
