// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";

/// @title AttributionLedger
/// @notice Epochs of attrace attribution: a Merkle root of (epoch, trancheId, account, score,
/// amount) leaves in OpenZeppelin StandardMerkleTree form, funded in the chain's native token,
/// claimable after a challenge window unless disputed. An upheld dispute cancels the epoch's
/// commitment; the corrected commitment is the epoch's next revision (claims follow the live one).
/// Tranches are registered by content root (StandardMerkleTree of bytes32 example digests) before
/// they are paid. Formats: shared/specs/ledger.md, docs/ledger.md ("Registry", "Revisions").
contract AttributionLedger is EIP712 {
    enum State {
        None,
        Committed,
        Disputed,
        Cancelled
    }

    struct Epoch {
        bytes32 root;
        bytes32 manifestHash;
        uint256 totalReward;
        uint256 claimed;
        uint64 committedAt;
        uint64 challengeEnds;
        State state;
        uint32 revision;
    }

    struct Registration {
        bytes32 contentRoot;
        address account;
        uint64 exampleCount;
        uint64 order;
        uint64 registeredAt;
        address registrant;
        string id;
        string license;
    }

    bytes32 public constant EPOCH_COMMITMENT_TYPEHASH =
        keccak256("EpochCommitment(uint64 epoch,bytes32 root,bytes32 manifestHash,uint256 totalReward)");

    address public immutable submitter;
    address public immutable arbiter;
    uint64 public immutable challengePeriod;

    mapping(uint64 epoch => Epoch) public epochs;
    /// @dev Claimed leaves per epoch. Claims happen only after the window of an undisputed epoch,
    /// and only disputed epochs can be cancelled, so a cancelled commitment never has claims.
    mapping(uint64 epoch => mapping(bytes32 leaf => bool)) public claimedLeaf;
    /// @notice Root of every revision ever committed for an epoch (cancelled ones included).
    mapping(uint64 epoch => mapping(uint32 revision => bytes32 root)) public revisionRoot;

    mapping(bytes32 trancheId => Registration) private _registrations;
    /// @notice trancheId of each registration, by order - 1.
    bytes32[] public registrationOrder;
    /// @notice The first tranche registered with a content root.
    mapping(bytes32 contentRoot => bytes32 trancheId) public firstWithContent;

    event EpochCommitted(
        uint64 indexed epoch, bytes32 indexed root, bytes32 manifestHash, uint256 totalReward, uint64 challengeEnds, string uri
    );
    event EpochDisputed(uint64 indexed epoch, address indexed disputer, bytes32 reasonHash);
    event EpochResolved(uint64 indexed epoch, bool upheld);
    event Claimed(uint64 indexed epoch, bytes32 indexed trancheId, address indexed account, uint256 score, uint256 amount);
    event EpochRevised(uint64 indexed epoch, uint32 revision, bytes32 cancelledRoot, bytes32 root);
    event TrancheRegistered(
        bytes32 indexed trancheId,
        bytes32 indexed contentRoot,
        address indexed account,
        uint64 order,
        uint64 exampleCount,
        address registrant,
        bytes32 sameContentAs,
        string id,
        string license
    );

    error Unauthorized();
    error EpochExists(uint64 epoch);
    error UnknownEpoch(uint64 epoch);
    error WrongValue(uint256 sent, uint256 required);
    error NotFinal(uint64 epoch, uint64 challengeEnds);
    error ChallengeClosed(uint64 epoch);
    error Disputed(uint64 epoch);
    error NotDisputed(uint64 epoch);
    error Cancelled(uint64 epoch);
    error AlreadyClaimed(uint64 epoch, bytes32 leaf);
    error InvalidProof();
    error ExceedsTotal(uint64 epoch);
    error TransferFailed();
    error TrancheExists(bytes32 trancheId);
    error UnknownTranche(bytes32 trancheId);
    error EmptyTranche();

    constructor(address arbiter_, uint64 challengePeriod_) EIP712("AttributionLedger", "1") {
        submitter = msg.sender;
        arbiter = arbiter_;
        challengePeriod = challengePeriod_;
    }

    /// @notice Commits an epoch; msg.value must equal totalReward (the pool, in native units).
    function commitEpoch(uint64 epoch, bytes32 root, bytes32 manifestHash, uint256 totalReward, string calldata uri)
        external
        payable
    {
        if (msg.sender != submitter) revert Unauthorized();
        Epoch storage e = epochs[epoch];
        if (e.state == State.Committed || e.state == State.Disputed) revert EpochExists(epoch);
        if (msg.value != totalReward) revert WrongValue(msg.value, totalReward);
        uint64 ends = uint64(block.timestamp) + challengePeriod;
        // A cancelled epoch committed again is its next revision, replacing the cancelled one.
        uint32 revision = e.revision + 1;
        bytes32 cancelledRoot = e.root;
        epochs[epoch] = Epoch(root, manifestHash, totalReward, 0, uint64(block.timestamp), ends, State.Committed, revision);
        revisionRoot[epoch][revision] = root;
        emit EpochCommitted(epoch, root, manifestHash, totalReward, ends, uri);
        if (revision > 1) emit EpochRevised(epoch, revision, cancelledRoot, root);
    }

    /// @notice Registers a tranche by content before it is paid; anyone may register, the
    /// registrant is recorded. Idempotent for the same (id, contentRoot, account); the same id
    /// with other content or another account is refused. The same content under another id is
    /// recorded, and its event names the first tranche registered with that content.
    function registerTranche(
        string calldata id,
        address account,
        string calldata license,
        bytes32 contentRoot,
        uint64 exampleCount
    ) external returns (uint64 order) {
        if (bytes(id).length == 0 || exampleCount == 0 || contentRoot == bytes32(0)) revert EmptyTranche();
        bytes32 trancheId = keccak256(bytes(id));
        Registration storage r = _registrations[trancheId];
        if (r.order != 0) {
            if (r.contentRoot == contentRoot && r.account == account) return r.order;
            revert TrancheExists(trancheId);
        }
        order = uint64(registrationOrder.length) + 1;
        registrationOrder.push(trancheId);
        _registrations[trancheId] =
            Registration(contentRoot, account, exampleCount, order, uint64(block.timestamp), msg.sender, id, license);
        bytes32 first = firstWithContent[contentRoot];
        if (first == bytes32(0)) firstWithContent[contentRoot] = trancheId;
        _emitRegistered(trancheId, first);
    }

    // Read back from storage: emitting straight from registerTranche's arguments is too deep a stack.
    function _emitRegistered(bytes32 trancheId, bytes32 first) private {
        Registration storage r = _registrations[trancheId];
        emit TrancheRegistered(
            trancheId, r.contentRoot, r.account, r.order, r.exampleCount, r.registrant, first, r.id, r.license
        );
    }

    /// @notice Number of registrations so far.
    function registrationCount() external view returns (uint256) {
        return registrationOrder.length;
    }

    /// @notice A tranche's registration (order 0: not registered).
    function registration(bytes32 trancheId) external view returns (Registration memory) {
        return _registrations[trancheId];
    }

    /// @notice The registration with sequence number `order` (1 = first).
    function registrationAt(uint64 order) external view returns (Registration memory) {
        if (order == 0 || order > registrationOrder.length) revert UnknownTranche(bytes32(uint256(order)));
        return _registrations[registrationOrder[order - 1]];
    }

    /// @notice Whether an example digest is in a registered tranche's content (OpenZeppelin
    /// StandardMerkleTree leaf of one bytes32 value).
    function verifyExample(bytes32 trancheId, bytes32 exampleDigest, bytes32[] calldata proof) external view returns (bool) {
        Registration storage r = _registrations[trancheId];
        if (r.order == 0) revert UnknownTranche(trancheId);
        bytes32 leaf = keccak256(bytes.concat(keccak256(abi.encode(exampleDigest))));
        return MerkleProof.verifyCalldata(proof, r.contentRoot, leaf);
    }

    /// @notice Freezes an epoch before its challenge window ends; anyone may dispute.
    function dispute(uint64 epoch, bytes32 reasonHash) external {
        Epoch storage e = _live(epoch);
        if (e.state == State.Disputed) revert Disputed(epoch);
        if (block.timestamp >= e.challengeEnds) revert ChallengeClosed(epoch);
        e.state = State.Disputed;
        emit EpochDisputed(epoch, msg.sender, reasonHash);
    }

    /// @notice Arbiter's decision: upheld cancels the epoch and refunds the pool to the
    /// submitter (the epoch may then be committed again); rejected lets it continue.
    function resolve(uint64 epoch, bool upheld) external {
        if (msg.sender != arbiter) revert Unauthorized();
        Epoch storage e = _live(epoch);
        if (e.state != State.Disputed) revert NotDisputed(epoch);
        if (upheld) {
            e.state = State.Cancelled;
            uint256 refund = e.totalReward - e.claimed;
            emit EpochResolved(epoch, true);
            (bool ok,) = submitter.call{value: refund}("");
            if (!ok) revert TransferFailed();
        } else {
            e.state = State.Committed;
            emit EpochResolved(epoch, false);
        }
    }

    /// @notice Pays `amount` to `account` for one leaf; anyone may send it.
    function claim(
        uint64 epoch,
        bytes32 trancheId,
        address account,
        uint256 score,
        uint256 amount,
        bytes32[] calldata proof
    ) external {
        Epoch storage e = _live(epoch);
        if (e.state == State.Disputed) revert Disputed(epoch);
        if (block.timestamp < e.challengeEnds) revert NotFinal(epoch, e.challengeEnds);
        bytes32 leaf = keccak256(bytes.concat(keccak256(abi.encode(epoch, trancheId, account, score, amount))));
        if (!MerkleProof.verifyCalldata(proof, e.root, leaf)) revert InvalidProof();
        if (claimedLeaf[epoch][leaf]) revert AlreadyClaimed(epoch, leaf);
        if (e.claimed + amount > e.totalReward) revert ExceedsTotal(epoch);
        claimedLeaf[epoch][leaf] = true;
        e.claimed += amount;
        emit Claimed(epoch, trancheId, account, score, amount);
        (bool ok,) = account.call{value: amount}("");
        if (!ok) revert TransferFailed();
    }

    /// @notice EIP-712 digest of an EpochCommitment receipt.
    function receiptDigest(uint64 epoch, bytes32 root, bytes32 manifestHash, uint256 totalReward)
        public
        view
        returns (bytes32)
    {
        return _hashTypedDataV4(keccak256(abi.encode(EPOCH_COMMITMENT_TYPEHASH, epoch, root, manifestHash, totalReward)));
    }

    /// @notice Signer of a receipt (65-byte r||s||v signature; high-s signatures are rejected).
    function receiptSigner(uint64 epoch, bytes32 root, bytes32 manifestHash, uint256 totalReward, bytes calldata signature)
        external
        view
        returns (address)
    {
        return ECDSA.recover(receiptDigest(epoch, root, manifestHash, totalReward), signature);
    }

    function _live(uint64 epoch) private view returns (Epoch storage e) {
        e = epochs[epoch];
        if (e.state == State.None) revert UnknownEpoch(epoch);
        if (e.state == State.Cancelled) revert Cancelled(epoch);
    }
}
