"""What confines each sandbox's QEMU on the host (the "jail").

The VM is the boundary a container must not cross; QEMU itself is the
next target of a guest that breaks out of it. So a jailed QEMU holds
nothing worth taking:

* an identity of its own: a uid and gid leased from a configured range
  for the life of one VM (:mod:`.identity`), no supplementary groups
  (``kvm`` only when it runs on KVM), no capabilities, no_new_privs;
* its own mount, network, IPC and UTS namespaces; its root is a small
  tmpfs holding only the QEMU binary, its libraries and data files, the
  guest kernel and initrd, bound read-only (:mod:`.rootfs`). It has no
  /proc, no host network (taps come as file descriptors) and no way to
  open a host file by name;
* file descriptors for everything it must write: disks, taps, the QMP,
  agent and console sockets are opened by the privileged side (the
  shim) and passed in, so nothing on the host is owned by QEMU's uid;
* a host cgroup per sandbox (:mod:`.cgroup`, v1 and v2) with a memory
  limit (guest RAM plus overhead), a CPU quota from the container's
  ``cpu`` and a pids limit;
* QEMU's own seccomp filter (``-sandbox``, see the argv builder).

:func:`kata_zun.jail.launch.prepare` puts these together for one VM.
"""
