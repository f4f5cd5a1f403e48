"""A throwaway PKI for the TLS tests (test_tls.py, test_wss.py), made by the
openssl CLI in a temp dir at test time: a CA that signs the cluster's
certificates, a rogue CA that signs a look-alike, and a certificate for the
wrong name. EC keys: fast to make."""
import os
import shutil
import subprocess
import tempfile


class Pki:
    def __init__(self, openssl):
        self.openssl = openssl
        self.dir = tempfile.mkdtemp(prefix="parley-tls-pki-")
        self.ca = self._ca("ca")
        self.rogue_ca = self._ca("rogue-ca")
        self.server = self._leaf("server", "ca", "IP:127.0.0.1,DNS:localhost")
        self.rogue = self._leaf("rogue", "rogue-ca", "IP:127.0.0.1,DNS:localhost")
        self.misnamed = self._leaf("misnamed", "ca", "DNS:elsewhere.example")

    def _openssl(self, *args):
        r = subprocess.run([self.openssl] + list(args), cwd=self.dir, capture_output=True,
                           text=True)
        if r.returncode != 0:
            raise RuntimeError("openssl %s failed: %s" % (" ".join(args[:2]), r.stderr))

    def _ca(self, name):
        self._openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                      "-nodes", "-keyout", name + ".key", "-out", name + ".pem", "-days", "2",
                      "-subj", "/CN=parley test " + name)
        return os.path.join(self.dir, name + ".pem")

    def _leaf(self, name, ca, san):
        # Peer links use one certificate both ways: serverAuth and clientAuth.
        with open(os.path.join(self.dir, name + ".ext"), "w") as f:
            f.write("subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n"
                    "basicConstraints=CA:FALSE\n" % san)
        self._openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                      "-keyout", name + ".key", "-out", name + ".csr", "-subj", "/CN=" + name)
        self._openssl("x509", "-req", "-in", name + ".csr", "-CA", ca + ".pem", "-CAkey", ca + ".key",
                      "-CAcreateserial", "-out", name + ".pem", "-days", "2", "-extfile", name + ".ext")
        return (os.path.join(self.dir, name + ".pem"), os.path.join(self.dir, name + ".key"))

    def tls(self, leaf=None, ca=None, **kw):
        """A config "tls" object: the cluster's certificate unless leaf."""
        leaf = leaf or self.server
        t = {"cert": leaf[0], "key": leaf[1], "ca": ca or self.ca}
        t.update(kw)
        return t

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)
