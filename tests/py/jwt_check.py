"""Independent JWT check with PyJWT: sign with a mounted private JWK, verify against a mounted
JWKS. Exit 0 on success; `verify` exits 3 when the token does not verify."""
import json
import sys

import jwt


def main():
    cmd = sys.argv[1]
    if cmd == "sign":
        jwk = json.load(open(sys.argv[2]))
        key = jwt.PyJWK(jwk)
        token = jwt.encode({"sub": "keyward-demo"}, key.key, algorithm=jwk["alg"], headers={"kid": jwk["kid"]})
        print(token)
    elif cmd == "verify":
        jwks = jwt.PyJWKSet.from_dict(json.load(open(sys.argv[2])))
        token = sys.argv[3]
        kid = jwt.get_unverified_header(token)["kid"]
        match = [k for k in jwks.keys if k.key_id == kid]
        if not match:
            print(f"no key with kid {kid} in the JWKS ({len(jwks.keys)} keys)")
            sys.exit(3)
        try:
            jwt.decode(token, match[0].key, algorithms=[match[0].algorithm_name])
        except jwt.InvalidTokenError as e:
            print(f"invalid: {e}")
            sys.exit(3)
        print(f"verified with kid {kid} ({len(jwks.keys)} keys in the JWKS)")
    else:
        sys.exit("usage: jwt_check.py sign JWK | verify JWKS TOKEN")


if __name__ == "__main__":
    main()
