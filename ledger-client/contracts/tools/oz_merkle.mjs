// Reference roots and proofs from OpenZeppelin's StandardMerkleTree, for the C++ tests.
// Usage: node tools/oz_merkle.mjs IN.json OUT.json
//   IN:  {"rows": [["epoch", "0xtrancheId", "0xaccount", "score", "amount"], ...]}, or with
//        "types": ["bytes32"] and rows [["0xdigest"], ...] for the registry's content roots;
//        optional "check": [["0x..", ...], ...]: proofs made elsewhere, one per row
//   OUT: {"root": "0x..", "leaves": ["0x..", ...], "proofs": [["0x..", ...], ...]}  (row order),
//        and "checked": [true|false, ...] (OpenZeppelin's verify of each "check" proof)
// Output goes to a file: piped output of node can be cut short when it exits.
import { StandardMerkleTree } from '@openzeppelin/merkle-tree';
import { readFileSync, writeFileSync } from 'node:fs';

const [input, output] = process.argv.slice(2);
const { rows, types: given, check } = JSON.parse(readFileSync(input, 'utf8'));
const types = given ?? ['uint64', 'bytes32', 'address', 'uint256', 'uint256'];
const tree = StandardMerkleTree.of(rows, types);
const leaves = rows.map((_, i) => tree.leafHash(rows[i]));
const proofs = rows.map((_, i) => tree.getProof(i));
const out = { root: tree.root, leaves, proofs };
if (check) out.checked = rows.map((r, i) => StandardMerkleTree.verify(tree.root, types, r, check[i]));
writeFileSync(output, JSON.stringify(out));
