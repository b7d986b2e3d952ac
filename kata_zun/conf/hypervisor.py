from oslo_config import cfg

GROUP = cfg.OptGroup('kata_hypervisor', title='QEMU options')

OPTS = [
    cfg.StrOpt('qemu_path', default='/usr/bin/qemu-system-x86_64',
               help='QEMU system emulator binary.'),
    cfg.StrOpt('machine_type', default='microvm',
               choices=['microvm', 'q35'],
               help='QEMU machine type. microvm boots fastest (and gets a '
                    'PCIe host bridge for NIC hotplug when its network '
                    'needs it); q35 is a full PC with PCI.'),
    cfg.StrOpt('accelerator', default='auto',
               choices=['auto', 'kvm', 'tcg'],
               help='auto: use KVM when a probe really runs the guest '
                    'kernel on it, else TCG with a warning.'),
    cfg.StrOpt('cpu_model', default='max',
               help='QEMU -cpu model. With KVM, "max" means the host CPU. '
                    'Under TCG the erms and fsrm features are turned off '
                    '(TCG runs the string instructions they select one '
                    'byte at a time) unless this value names them.'),
    cfg.IntOpt('default_vcpus', default=1, min=1, max=64,
               help='vCPUs of a VM when the container sets no CPU limit.'),
    cfg.IntOpt('default_memory_mb', default=256, min=64,
               help='Guest RAM when the container sets no memory limit.'),
    cfg.IntOpt('memory_overhead_mb', default=96, min=32,
               help='Guest RAM added on top of a container memory limit '
                    'for the guest kernel and agent.'),
    cfg.BoolOpt('seccomp_sandbox', default=True,
                help='Run QEMU with -sandbox on,obsolete=deny,'
                     'elevateprivileges=deny,spawn=deny,'
                     'resourcecontrol=deny.'),
    cfg.BoolOpt('free_page_reporting', default=True,
                help='Give every VM a virtio balloon with free page '
                     'reporting: the guest returns the memory it frees to '
                     'the host, so idle sandboxes cost the host what they '
                     'use, not what they once touched. The balloon is '
                     'never inflated and cannot give a guest more than its '
                     'memory size. Only cold-booted VMs give memory back: '
                     'QEMU (7.2 and later) discards a range of a VM '
                     'template clone\'s RAM by punching a hole in the '
                     'template\'s sealed RAM, which the seal refuses, so '
                     'a clone keeps the pages it once wrote (see '
                     '[kata] vm_templating).'),
    cfg.IntOpt('tsc_khz', default=0, min=0,
               help='Host TSC rate passed as tsc_early_khz (microvm hangs '
                    'in calibration without it). 0 reads it from the '
                    'host.'),
    cfg.IntOpt('shutdown_timeout', default=5, min=0,
               help='Seconds to wait for a graceful VM power-off before '
                    'QEMU is killed.'),
    cfg.IntOpt('accel_probe_timeout', default=15, min=1,
               help='Seconds the KVM probe boot may take.'),
]


def register_opts(conf):
    conf.register_group(GROUP)
    conf.register_opts(OPTS, group=GROUP)


def list_opts():
    return {GROUP: OPTS}
