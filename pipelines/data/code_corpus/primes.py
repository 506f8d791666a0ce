"""Prime numbers."""


def sieve(limit):
    """All primes below limit (sieve of Eratosthenes)."""
    if limit < 3:
        return []
    flags = [True] * limit
    flags[0] = flags[1] = False
    for p in range(2, int(limit**0.5) + 1):
        if flags[p]:
            flags[p * p :: p] = [False] * len(range(p * p, limit, p))
    return [i for i, is_prime in enumerate(flags) if is_prime]


def factorize(n):
    factors, d = [], 2
    while d * d <= n:
        while n % d == 0:
            factors.append(d)
            n //= d
        d += 1
    if n > 1:
        factors.append(n)
    return factors
