#!/usr/bin/python3
"""Reference values for tests/unit/test_accountant.c, computed independently of the C code.

Writes accountant_cases.txt beside this file:
    orders <a> <a> ...                   the orders epsilon() minimises over, in the C order
    rdp <q> <z> <order> <value>          RDP of one step of the sampled Gaussian mechanism
    eps <q> <z> <steps> <delta> <value>  min over the accountant's orders of
                                         steps * RDP(a) + log(1/delta) / (a - 1)
Two methods, neither the C code's log-space sums:
  - integer orders: the binomial sum sum_k C(a,k) (1-q)^(a-k) q^k exp((k^2-k)/(2 z^2)) in
    exact integers and 60-digit decimal arithmetic (no logarithms until the end);
  - fractional orders: the definition A_a = E_{x ~ N(0, z^2)} [((1-q) + q exp((2x-1)/(2z^2)))^a]
    (Mironov, Talwar, Zhang 2019, section 3.1) integrated numerically with numpy on a fine grid
    (the integrand is a smooth Gaussian-like bump: the trapezoid rule converges fast).
Regenerate (Debian python3-numpy): /usr/bin/python3 tests/unit/data/accountant_cases.py
"""
import math
import os
from decimal import Decimal, getcontext

import numpy as np

getcontext().prec = 60


def rdp_int_exact(q, z, a):
    q = Decimal(repr(q))
    z = Decimal(repr(z))
    total = Decimal(0)
    for k in range(a + 1):
        e = Decimal(k * k - k) / (2 * z * z)
        # Decimal refuses 0 ** 0 (q = 1, k = a): that factor is 1.
        p0 = (1 - q) ** (a - k) if a > k else Decimal(1)
        total += math.comb(a, k) * p0 * q ** k * e.exp()
    return float(total.ln() / (a - 1))


def rdp_integral(q, z, a):
    if q == 1.0:
        return a / (2 * z * z)
    hi = 40 * z + 2 * a + 10
    x = np.linspace(-40 * z - 10, hi, 400001)
    lmu0 = -x * x / (2 * z * z) - math.log(z * math.sqrt(2 * math.pi))
    lr = np.logaddexp(math.log1p(-q), math.log(q) + (2 * x - 1) / (2 * z * z))
    f = lmu0 + a * lr
    m = f.max()
    integral = np.trapz(np.exp(f - m), x)
    return (m + math.log(integral)) / (a - 1)


def orders():
    # The accountant's orders (server/privacy/accountant.h): quarters 1.25 .. 9.75 that are
    # not integers, every integer 2..256, then 320 .. 1024. (Up to 10.75 before: a reference
    # with more orders than the C code could only agree while the best order was elsewhere.)
    frac = [1 + 0.25 * k for k in range(1, 36) if k % 4 != 0]
    return frac + list(range(2, 257)) + [320, 384, 512, 768, 1024]


def epsilon(q, z, steps, delta):
    best = math.inf
    for a in orders():
        r = rdp_int_exact(q, z, a) if a == int(a) else rdp_integral(q, z, a)
        e = steps * r + math.log(1 / delta) / (a - 1)
        best = min(best, e)
    return best


def main():
    # First line: the orders themselves, so the C test can check they are the accountant's.
    out = ["orders " + " ".join(repr(float(a)) for a in orders())]
    # Exact points: q = 1 is the plain Gaussian mechanism, a / (2 z^2).
    for q, z, a in [(1.0, 1.1, 2), (1.0, 0.7, 17), (0.01, 4.0, 2), (0.01, 1.0, 8),
                    (256 / 60000, 1.1, 32), (0.1, 0.5, 64), (0.5, 2.0, 256)]:
        out.append("rdp %r %r %r %.17g" % (q, z, a, rdp_int_exact(q, z, a)))
    # Integer orders once more through the integral: the two methods agree.
    for q, z, a in [(0.01, 1.0, 8), (0.05, 1.5, 3)]:
        out.append("rdp %r %r %r %.17g" % (q, z, a, rdp_integral(q, z, a)))
    for q, z, a in [(0.01, 1.0, 1.5), (0.05, 1.5, 2.75), (256 / 60000, 1.1, 7.25),
                    (0.2, 0.8, 1.25)]:
        out.append("rdp %r %r %r %.17g" % (q, z, a, rdp_integral(q, z, a)))
    settings = [
        # TF Privacy MNIST tutorial: N = 60000, batch 256, 60 epochs (steps = 60 * 60000 // 256).
        (256 / 60000, 1.1, 60 * 60000 // 256, 1e-5),
        (256 / 60000, 1.12, 60 * 60000 // 256, 1e-5),
        (256 / 60000, 1.2, 10 * 60000 // 256, 1e-5),
        (256 / 60000, 0.6, 30 * 60000 // 256, 1e-5),
        # Abadi et al. 2016, section 5.1 (figure 2): q = 0.01, sigma = 4, delta = 1e-5,
        # E = 100 and E = 400 epochs, T = E / q steps.
        (0.01, 4.0, 10000, 1e-5),
        (0.01, 4.0, 40000, 1e-5),
        # A federated scale (no published figure: it exercises large step counts and tiny q):
        # 100 devices per round out of 1e6, z = 1.0, 1e5 rounds, delta = 1e-6.
        (1e-4, 1.0, 100000, 1e-6),
    ]
    for q, z, steps, delta in settings:
        out.append("eps %r %r %d %r %.17g" % (q, z, steps, delta, epsilon(q, z, steps, delta)))
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "accountant_cases.txt")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
