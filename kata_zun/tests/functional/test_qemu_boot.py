"""Build guest assets with a stand-in agent and boot a real TCG VM."""

import os
import shutil
import socket
import tempfile
import time

import fixtures
from oslo_config import fixture as config_fixture
from oslotest import base
from testtools import content

from kata_zun import conf
from kata_zun.guest import builder
from kata_zun.hypervisor import base as hv_base
from kata_zun.hypervisor.qemu import vm as qemu_vm

# Guest code of stand-in agents: the agent port, opened once it exists.
OPEN_AGENT_PORT = '''
import os
import time


def open_agent_port():
    while True:
        for port in os.listdir('/sys/class/virtio-ports'):
            with open('/sys/class/virtio-ports/%s/name' % port) as f:
                if f.read().strip() == 'agent.0':
                    return os.open('/dev/' + port, os.O_RDWR)
        time.sleep(0.01)
'''

# Says READY on the agent port, then powers the VM off on request (which
# exercises ctypes and libffi in the guest).
STAND_IN_AGENT = OPEN_AGENT_PORT + '''

def main():
    fd = open_agent_port()
    os.write(fd, b'READY\\n')
    buf = b''
    while not buf.endswith(b'\\n'):
        buf += os.read(fd, 100)
    if buf == b'poweroff\\n':
        import ctypes
        libc = ctypes.CDLL('libc.so.6')
        os.sync()
        libc.reboot(0x4321FEDC)
'''


class QemuBootTestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        if not os.path.exists(conf.CONF.kata_hypervisor.qemu_path):
            self.skipTest('QEMU is not installed')
        self.useFixture(fixtures.Timeout(300, gentle=True))
        root = self.useFixture(fixtures.TempDir()).path
        # Unix socket paths must stay short: not under the deep TempDir.
        self.run_path = tempfile.mkdtemp(prefix='kzq', dir='/tmp')
        self.addCleanup(shutil.rmtree, self.run_path, True)
        cfg = self.useFixture(config_fixture.Config(conf.CONF))
        cfg.config(state_path=os.path.join(root, 'state'),
                   run_path=self.run_path, group='kata')
        cfg.config(accelerator='tcg', group='kata_hypervisor')
        self.agent_dir = os.path.join(root, 'agent')
        os.mkdir(self.agent_dir)
        with open(os.path.join(self.agent_dir, 'guest.py'), 'w') as f:
            f.write(STAND_IN_AGENT)

    def test_boot_ready_and_stop(self):
        assets = builder.build(agent_dir=self.agent_dir)
        self.assertEqual(assets, builder.find(agent_dir=self.agent_dir))
        self.assertLess(os.path.getsize(assets.initrd), 20 * 1024 * 1024)

        run_dir = os.path.join(self.run_path, 'vm')
        config = hv_base.VMConfig(
            name='boot-test', vcpus=1, memory_mb=256, kernel=assets.kernel,
            initrd=assets.initrd, run_dir=run_dir,
            console_log=os.path.join(run_dir, 'console.log'))
        started = time.monotonic()
        vm = qemu_vm.QemuHypervisor().start(config)
        self.addCleanup(vm.kill)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(sock.close)
        sock.connect(vm.agent_socket)
        sock.settimeout(60)
        data = b''
        while not data.endswith(b'\n'):
            chunk = sock.recv(64)
            if not chunk:
                break
            data += chunk
        with open(config.console_log, errors='replace') as f:
            console = f.read()
        self.assertEqual(b'READY\n', data, console)
        self.addDetail('boot-to-ready', content.text_content(
            '%.3f s' % (time.monotonic() - started)))
        self.assertEqual('running', vm.query_status()['status'])
        vm.pause()
        self.assertEqual('paused', vm.query_status()['status'])
        vm.resume()

        # The guest powers off: QEMU exits by itself and is reaped.
        sock.sendall(b'poweroff\n')
        vm.stop(timeout=60)
        self.assertEqual(0, vm.poll())
        self.assertFalse(os.path.exists('/proc/%d' % vm.pid))
        self.assertFalse(os.path.exists(vm.agent_socket))
